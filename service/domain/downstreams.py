"""The demo's downstreams, ``users`` and ``orders``, and the validation of their answers.

Replace these with your own downstreams; keep the runtime's
:class:`~service.runtime.downstream.DownstreamClient` underneath.
:data:`CLIENTS` declares them to the runtime's registry; their URLs and
per-service settings are ``[downstream.services.users]`` and ``...orders]``.
``UsersClient.get_user`` is the pipeline's enrichment lookup: TTL-cached and
single-flight; ``refusing`` and ``cached`` let a batch skip its lookups at
once while the users circuit is open.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from service.runtime.downstream import Deadline, DownstreamClient, DownstreamNotFound, ensure
from service.runtime.downstream.cache import SingleFlight, TTLCache, missing
from service.runtime.downstream.registry import ClientFactory
from service.runtime.keys import DOWNSTREAMS
from service.runtime.metrics import Metrics
from service.runtime.settings import DownstreamService

T = TypeVar("T")


class UsersClient(DownstreamClient):
    def __init__(self, name: str, settings: DownstreamService, metrics: Metrics) -> None:
        super().__init__(name, settings, metrics)
        self._cache: TTLCache[str, dict[str, Any] | None] = TTLCache(
            settings.cache_ttl_seconds, settings.cache_size
        )
        self._flight: SingleFlight[str, dict[str, Any] | None] = SingleFlight(f"{name}-lookup")
        self.lookups = lookups = metrics.counter(
            "enrich_cache_lookups_total", "Enrichment cache lookups by result.", ("result",)
        )
        self._hit, self._miss, self._shared = (
            lookups.labels("hit"),
            lookups.labels("miss"),
            lookups.labels("coalesced"),
        )

    async def fetch_user(self, user_id: str, deadline: Deadline) -> dict[str, Any]:
        """The user, fresh from the downstream; :class:`DownstreamNotFound` if unknown."""
        user = await self.get_json(f"/users/{quote(user_id, safe='')}", deadline, what="user")
        ensure(
            isinstance(user, dict) and user.get("id") == user_id,
            self.name,
            "user is not an object with the requested id",
        )
        return user  # type: ignore[no-any-return]

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        """The user or ``None`` if unknown, cached; raises ``DownstreamError`` on failure.

        Unknown users are cached too (a burst of events for a deleted user
        must not hammer the downstream); failures are not.
        """
        cached = self._cache.get(user_id)
        if not missing(cached):
            self._hit.value += 1
            return cached
        user, shared = await self._flight.do(user_id, lambda: self._load(user_id))
        (self._shared if shared else self._miss).value += 1
        return user

    def cached(self, user_id: str, default: T) -> dict[str, Any] | T | None:
        """The cached user (``None``: known not to exist), or ``default``; never a call."""
        cached = self._cache.get(user_id)
        if missing(cached):
            return default
        self._hit.value += 1
        return cached

    async def _load(self, user_id: str) -> dict[str, Any] | None:
        # Runs once per key for all concurrent callers; fills the cache even
        # if every caller has given up meanwhile.
        try:
            user: dict[str, Any] | None = await self.fetch_user(
                user_id, Deadline.after(self.settings.deadline_seconds)
            )
        except DownstreamNotFound:
            user = None
        self._cache.put(user_id, user)
        return user

    async def close(self) -> None:
        await self._flight.close()
        await super().close()


class OrdersClient(DownstreamClient):
    async def fetch_orders(self, user_id: str, deadline: Deadline) -> list[dict[str, Any]]:
        """The user's orders (maybe none), each with a string ``id``, numeric ``amount``, ``ts``."""
        data = await self.get_json(
            f"/users/{quote(user_id, safe='')}/orders", deadline, what="orders"
        )
        orders = data.get("orders") if isinstance(data, dict) else None
        ensure(isinstance(orders, list), self.name, "no orders list")
        assert isinstance(orders, list)
        for order in orders:
            ensure(
                isinstance(order, dict)
                and isinstance(order.get("id"), str)
                and _number(order.get("amount"))
                and _number(order.get("ts")),
                self.name,
                "order without id, amount or ts",
            )
        return orders


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# What the domain needs from [downstream.services]: these names, of these classes.
CLIENTS: dict[str, ClientFactory] = {"users": UsersClient, "orders": OrdersClient}


def users(app: web.Application) -> UsersClient:
    return app[DOWNSTREAMS].client("users", UsersClient)


def orders(app: web.Application) -> OrdersClient:
    return app[DOWNSTREAMS].client("orders", OrdersClient)
