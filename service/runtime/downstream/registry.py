"""The service's downstream clients, one per ``[downstream.services.<name>]`` entry.

A domain declares the clients it needs by name, with the class of each
(``{"users": UsersClient}``); every other configured entry gets a plain
:class:`~.client.DownstreamClient`. Adding a downstream is a table entry in
the settings, plus a client class when it needs more than JSON calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from service.runtime.downstream.client import DownstreamClient
from service.runtime.metrics import Metrics
from service.runtime.settings import DownstreamService, DownstreamSettings

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

C = TypeVar("C", bound=DownstreamClient)
ClientFactory = Callable[[str, DownstreamService, Metrics], DownstreamClient]


class Downstreams(Mapping[str, DownstreamClient]):
    """The started clients by name (``app[DOWNSTREAMS]``)."""

    def __init__(self, clients: Mapping[str, DownstreamClient]) -> None:
        self._clients = dict(clients)

    def __getitem__(self, name: str) -> DownstreamClient:
        return self._clients[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def client(self, name: str, kind: type[C]) -> C:
        """The client ``name``, typed as ``kind`` (what the domain declared for it)."""
        client = self._clients[name]
        if not isinstance(client, kind):
            raise TypeError(
                f"downstream {name!r} is a {type(client).__name__}, not a {kind.__name__}"
            )
        return client


@contextlib.asynccontextmanager
async def open_downstreams(
    settings: DownstreamSettings,
    metrics: Metrics,
    declared: Mapping[str, ClientFactory] | None = None,
    *,
    tracing: Tracing | None = None,
) -> AsyncIterator[Downstreams]:
    """Start a client per configured entry (``declared`` ones of their class), close at the end.

    A declared name without an entry (no URL) is a configuration error.
    ``tracing`` (when on) is given to every client.
    """
    declared = declared or {}
    metrics.register_task_group("downstream")
    names = list(dict.fromkeys([*declared, *settings.services]))
    clients = {
        name: declared.get(name, DownstreamClient)(name, settings.service(name), metrics)
        for name in names
    }
    async with contextlib.AsyncExitStack() as stack:
        for client in clients.values():
            client.tracing = tracing
            await client.start()
            stack.push_async_callback(client.close)
        yield Downstreams(clients)
