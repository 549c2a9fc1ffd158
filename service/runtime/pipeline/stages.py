"""A pipeline stage: one small step between intake and the sink.

The pipeline is a list of stages (the wiring's one line per stage). Each
stage has its own workers and the bounded queue behind it
(``[pipeline.stages.<name>]``: ``workers``, ``capacity``). A worker takes up
to :data:`WORKER_BATCH` items, hands their values to :meth:`Stage.process`
and passes what comes back on; after the last stage each value is encoded
into its sink line (the pipeline's ``encode``).

A stage maps each value of a batch to its next form, one per value, in
order: it may not drop an event that a client was told is accepted. It owns
its failures: a value it cannot process goes on in some marked form (the
demo's enrichment writes the event unenriched). If :meth:`Stage.process`
raises anyway, the batch goes on through :meth:`Stage.bypass`, and so does
every batch once a slow shutdown drain decides to skip the stages. That
drain also sets :attr:`Stage.bypassing`: a stage that waits per value (a
lookup each) checks it between values and bypasses the rest of its batch,
so a hanging dependency cannot hold the drain for a whole batch of waits.
"""

from __future__ import annotations

from typing import Any

import orjson

# Items a worker takes at a time: large enough that queue operations are rare
# (and that a stage can share work within a batch, e.g. one lookup per user),
# small enough that the workers share a burst of large HTTP batches.
WORKER_BATCH = 512


class Stage:
    """Subclass it: a ``name`` (metrics label, settings key) and :meth:`process`."""

    name = "stage"
    # Set by a slow shutdown drain: bypass whatever is left, as soon as you can.
    bypassing = False

    async def process(self, values: list[Any]) -> list[Any]:
        """Each value's next form, one per value, in order."""
        raise NotImplementedError

    def bypass(self, values: list[Any]) -> list[Any]:
        """What the values become when this stage is skipped; as they are, by default."""
        return values


def encode_json(event_id: str, value: Any, received_at: float) -> bytes:
    """The default sink line: ``{"id", "received_at", **value}`` (or ``"value": value``)."""
    if isinstance(value, dict):
        return orjson.dumps({"id": event_id, "received_at": received_at, **value})
    return orjson.dumps({"id": event_id, "received_at": received_at, "value": value})
