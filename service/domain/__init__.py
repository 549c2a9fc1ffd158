"""The demo domain: event ingestion and enrichment. Replace it with your own.

* :mod:`.events`: the event schema (one schema, two transports);
* :mod:`.enrich`: the pipeline stage and the sink line's layout;
* :mod:`.downstreams`: the ``users`` and ``orders`` clients;
* :mod:`.tcp_events`: the TCP line handler (``OK <id>`` per JSON line);
* :mod:`.routes`: ``/v1/events``, ``/v1/hash``, ``/v1/users/{id}/summary``;
* :mod:`.settings`, :mod:`.keys`: its settings sections and app keys.

It imports the runtime (``service.runtime``), never the wiring
(``service.app``, ``service.cli``) or the tools.
"""
