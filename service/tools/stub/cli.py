"""``service stub --name NAME --port N ...``: run one stub until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from service.runtime.loop import run_loop
from service.runtime.settings import DownstreamSettings
from service.tools.stub.app import STATS, Knobs, create_app, serving


def _emit(event: str, **fields: Any) -> None:
    """One JSON log line (the service's format, without importing its logging)."""
    line = {
        "event": event,
        "logger": "stub",
        "level": "info",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def loopback_targets(downstream: DownstreamSettings) -> dict[str, int]:
    """The configured downstreams a local stub can stand in for: name -> port (on loopback)."""
    targets = {}
    for name, entry in downstream.services.items():
        url = urlsplit(entry.url)
        if url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost") and url.port:
            targets[name] = url.port
    return targets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", required=True, help="the downstream's name: users and orders have a dataset"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--latency-jitter-ms",
        type=float,
        default=0.0,
        help="random extra latency, uniform in [0, this]",
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 503")
    parser.add_argument(
        "--reset-rate",
        type=float,
        default=0.0,
        help="fraction of connections aborted with a TCP RST",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")


async def _main(args: argparse.Namespace) -> int:
    knobs = Knobs(args.latency_ms, args.latency_jitter_ms, args.error_rate, args.reset_rate)
    app = create_app(args.name, knobs, args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serving(app, args.host, args.port) as port:
        _emit("listening", http_port=port, name=args.name, **asdict(knobs))
        await stop.wait()
    _emit("stopped", name=args.name, **app[STATS].as_json())
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return run_loop(_main(args), args.loop)
    except OSError as exc:
        print(f"service stub: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
