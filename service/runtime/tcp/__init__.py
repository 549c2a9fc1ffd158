"""The TCP line-protocol server: the wire is the runtime's, the lines are the service's.

* ``handler``: the :class:`LineHandler` a service plugs in;
* ``answers``: the protocol's fixed answers and safely built ``ERR`` lines;
* ``connection``: one client as an ``asyncio.Protocol``: framing, ordered
  answers, backpressure, lingering close;
* ``server``: the listener: limits, timers, metrics, shutdown.
"""

from service.runtime.tcp.handler import Answer, Echo, LineHandler
from service.runtime.tcp.server import TcpServer

__all__ = ["Answer", "Echo", "LineHandler", "TcpServer"]
