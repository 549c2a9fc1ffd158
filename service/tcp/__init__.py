"""The TCP line-protocol server of ../shared/SPEC.md ("TCP line protocol").

* ``intake``: the :class:`Intake` protocol the server feeds (the pipeline
  implements it) and a stand-in that never fills up;
* ``answers``: the fixed answers and safely built ``ERR`` lines;
* ``connection``: one client as an ``asyncio.Protocol``: framing, ordered
  answers, backpressure, lingering close;
* ``server``: the listener: limits, timers, metrics, shutdown.

It knows the event schema (``service.events``) but nothing of the pipeline's
internals.
"""

from service.tcp.intake import Intake, LocalIntake
from service.tcp.server import TcpServer

__all__ = ["Intake", "LocalIntake", "TcpServer"]
