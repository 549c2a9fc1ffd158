"""The ``service`` command: argument parsing and exit codes.

``service serve`` runs the service, ``service stub`` a downstream stub and
``service loadtest`` the load-test client. Wiring: this is where the
service's settings class and app factory meet the runtime's lifecycle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service import __version__
from service.settings import ConfigError, load_settings

EXIT_CONFIG = 2


def _serve(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.runtime import log
    from service.runtime.lifecycle import run_service

    settings = load_settings(args.config)
    if args.workers is not None:
        workers = settings.workers.model_copy(update={"count": args.workers})
        settings = settings.model_copy(update={"workers": workers})
    log.configure(settings.log)
    return run_service(settings, create_app)


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="service", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument(
        "--config", metavar="FILE", help="TOML file layered over the defaults (or SERVICE_CONFIG)"
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=_worker_count,
        help="processes sharing the ports: 1 (the default) runs no supervisor; "
        "0 is one per usable CPU (or workers.count)",
    )
    serve.set_defaults(func=_serve)

    from service.tools import stub

    stub_parser = sub.add_parser("stub", help="run a downstream stub (users or orders)")
    stub.add_arguments(stub_parser)
    stub_parser.set_defaults(func=stub.run)

    from service.tools.loadtest import cli as loadtest

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
