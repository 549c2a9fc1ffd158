"""What one load test runs: the target, the scenario, the loop and its bounds.

A :class:`Plan` is plain picklable data: the parent process builds it from the
arguments, splits it per worker process, and each worker builds its own
connections and requests from its share.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

HTTP_SCENARIOS = ("url", "info", "events", "summary", "hash", "mixed")
TCP_SCENARIOS = ("tcp-ping", "tcp-events")
DEFAULT_MIX = (("info", 5), ("events", 3), ("summary", 1), ("hash", 1))

# After --duration the client waits at most this long for the answers still in
# flight, then counts them as timeouts: the run never hangs on a stalled target.
MAX_GRACE_SECONDS = 2.0


class PlanError(ValueError):
    """Arguments that cannot make a load test; the message names the argument."""


@dataclass(frozen=True)
class Plan:
    kind: Literal["http", "tcp"]
    host: str
    port: int
    path: str  # the URL's path (with query): the request for "url", the prefix otherwise
    scenario: str
    concurrency: int
    rate: float | None = None  # requests/s (open loop); None: closed loop
    duration: float | None = 10.0
    requests: int | None = None
    warmup: float = 0.0
    timeout: float = 10.0
    workers: int = 1
    batch_size: int = 10
    users: int = 1000
    mix: tuple[tuple[str, int], ...] = DEFAULT_MIX
    headers: tuple[tuple[str, str], ...] = ()
    seed: int | None = None

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def grace(self) -> float:
        return min(self.timeout, MAX_GRACE_SECONDS)

    @property
    def target(self) -> str:
        if self.kind == "http":
            return f"http://{self.host}:{self.port}{self.path}"
        return f"{self.host}:{self.port}"

    def split(self) -> list[Plan]:
        """One plan per worker process: connections, rate and requests shared out."""
        n = self.workers
        plans = []
        for i in range(n):
            requests = None if self.requests is None else _share(self.requests, n, i)
            plans.append(
                dataclasses.replace(
                    self,
                    workers=1,
                    concurrency=_share(self.concurrency, n, i),
                    rate=None if self.rate is None else self.rate / n,
                    requests=requests,
                    seed=None if self.seed is None else self.seed + i,
                )
            )
        return plans


def _share(total: int, n: int, i: int) -> int:
    return total // n + (1 if i < total % n else 0)


def parse_http_target(url: str) -> tuple[str, int, str]:
    """``http://host:port/path?q`` -> (host, port, "/path?q")."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise PlanError(f"target {url!r}: only http:// is supported (no TLS on the fast path)")
    if not parts.hostname:
        raise PlanError(f"target {url!r}: no host")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise PlanError(f"target {url!r}: {exc}") from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return parts.hostname, port, path


def parse_tcp_target(target: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PlanError(f"target {target!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """``info=5,events=3`` -> (("info", 5), ("events", 3))."""
    mix = []
    for item in text.split(","):
        name, sep, weight = item.strip().partition("=")
        if name not in HTTP_SCENARIOS or name in ("url", "mixed"):
            raise PlanError(
                f"--mix: unknown scenario {name!r} (choose from info, events, summary, hash)"
            )
        if not sep or not weight.isdigit():
            raise PlanError(f"--mix: {item!r} needs a whole weight, e.g. {name}=3")
        if int(weight) > 0:
            mix.append((name, int(weight)))
    if not mix:
        raise PlanError("--mix: at least one scenario needs a weight above 0")
    return tuple(mix)
