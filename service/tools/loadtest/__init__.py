"""The included load-test client (independent of the service core).

``service loadtest http URL`` / ``service loadtest tcp HOST:PORT``. It must be
as trustworthy as wrk and never the bottleneck, so the hot path is raw asyncio
protocols (no ``ClientSession``), requests are encoded once, and responses are
parsed by httptools (llhttp). Nothing here imports the service itself: the
client is a separate tool that happens to ship in the same package.

Modules: ``plan`` (what to run), ``scenarios`` (pre-encoded requests),
``protocols`` (HTTP/1.1 and line connections), ``driver`` (closed and open
loop, one process), ``workers`` (several processes), ``report`` (merged
results, SLO), ``cli`` (arguments).
"""
