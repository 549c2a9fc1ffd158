"""The HTTP side of the runtime: the API middleware, problem documents, the listener.

* :mod:`.middleware`: request id, metrics, access log and errors in one layer;
* :mod:`.records`: what each request leaves behind, counted in batches;
* :mod:`.problem`: RFC 9457 problem documents;
* :mod:`.compat`: the only module that reads aiohttp's private fields;
* :mod:`.server`: the listener, with its request-header deadline;
* :mod:`.health`, :mod:`.openapi`: routes every service has.
"""
