"""The ``service`` command: argument parsing, the event loop choice, exit codes.

``service serve`` runs the service, ``service stub`` a downstream stub and
``service loadtest`` the load-test client. The loop is chosen here and only
here (``asyncio.Runner`` with uvloop's loop factory, or the stdlib loop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from service import __version__
from service.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from service.lifecycle import Service

EXIT_CONFIG = 2


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, or ``None`` for the stdlib loop."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run_loop(coro: Coroutine[Any, Any, int], kind: str, debug: bool = False) -> int:
    with asyncio.Runner(loop_factory=loop_factory(kind), debug=debug) as runner:
        return runner.run(coro)


def _serve(args: argparse.Namespace) -> int:
    from service import log

    settings: Settings = load_settings(args.config)
    log.configure(settings.log)
    return run_service(settings)


def run_service(settings: Settings, customize: Callable[[Service], None] | None = None) -> int:
    """Run the service on the configured loop until it stops; return the exit code.

    ``customize`` may add routes or components to the service before it
    starts (tests/apps/ use it); logging must already be configured.
    """
    from service import gctune, log, offload
    from service.lifecycle import Service, serve

    gctune.tune()

    async def main() -> int:
        service = Service(settings)
        if customize is not None:
            customize(service)
        return await serve(settings, service)

    try:
        code = run_loop(_with_log_flusher(main(), settings.log.flush_interval),
                        settings.loop.kind, settings.loop.debug)
    finally:
        log.sink().flush()
    if offload.abandoned_jobs():
        # Threads still run jobs that shutdown abandoned, and the interpreter
        # would join them at exit (concurrent.futures registers that): leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _with_log_flusher(coro: Coroutine[Any, Any, int], interval: float) -> int:
    """Flush buffered log lines every ``interval`` seconds while ``coro`` runs."""
    from service.log import sink

    out = sink()
    if interval <= 0:
        return await coro

    async def flusher() -> None:
        while True:
            await asyncio.sleep(interval)
            out.flush()

    task = asyncio.create_task(flusher(), name="lifecycle:log-flush")
    out.buffering = True
    try:
        return await coro
    finally:
        out.buffering = False
        task.cancel()
        out.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="service", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--config", metavar="FILE",
                       help="TOML file layered over the defaults (or SERVICE_CONFIG)")
    serve.set_defaults(func=_serve)

    from service import stub

    stub_parser = sub.add_parser("stub", help="run a downstream stub (users or orders)")
    stub.add_arguments(stub_parser)
    stub_parser.set_defaults(func=stub.run)

    from service.loadtest import cli as loadtest

    lt = sub.add_parser("loadtest", help="the included load-test client")
    loadtest.add_arguments(lt)
    lt.set_defaults(func=loadtest.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"{parser.prog}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code
