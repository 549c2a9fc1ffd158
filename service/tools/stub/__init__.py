"""The downstream stub: a real aiohttp server standing in for a downstream service.

* :mod:`.app`: the stub's app (dataset, misbehaviour, statistics);
* :mod:`.cli`: ``service stub``, and the loopback downstreams a stub can stand in for.
"""

from service.tools.stub.app import (
    KNOBS,
    STATS,
    Knobs,
    Stats,
    create_app,
    order_records,
    serving,
    user_number,
    user_record,
)
from service.tools.stub.cli import add_arguments, loopback_targets, run

__all__ = [
    "KNOBS",
    "STATS",
    "Knobs",
    "Stats",
    "add_arguments",
    "create_app",
    "loopback_targets",
    "order_records",
    "run",
    "serving",
    "user_number",
    "user_record",
]
