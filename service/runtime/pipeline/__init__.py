"""The event pipeline: bounded queues and owned workers, intake -> stages -> sink.

* :mod:`.engine`: :class:`Pipeline`, the workers and the drain;
* :mod:`.intake`: offers and ids (what transports call);
* :mod:`.stages`: the :class:`Stage` a domain subclasses;
* :mod:`.writer`: the batching, retrying sink writer;
* :mod:`.batchqueue`: the bounded queue of batches;
* :mod:`.sinks`: where delivered events end up (file, Redis Streams);
* :mod:`.stream`: followers of delivered events.
"""

from service.runtime.pipeline.engine import Encode, Pipeline
from service.runtime.pipeline.stages import WORKER_BATCH, Stage, encode_json

__all__ = ["WORKER_BATCH", "Encode", "Pipeline", "Stage", "encode_json"]
