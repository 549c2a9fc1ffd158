"""``service loadtest``: arguments, the run, the report, the exit status.

    service loadtest http http://127.0.0.1:8080/v1/info -c 64 -d 10
    service loadtest http http://127.0.0.1:8080 --scenario mixed --rate 2000 -d 30
    service loadtest tcp 127.0.0.1:8888 --scenario tcp-events -c 32 --requests 100000

Exit status: 0 done (and the SLO met), 1 the SLO is broken or nothing answered
at all, 2 bad arguments. The report goes to stdout, live progress to stderr
(only when it is a terminal), the full report as JSON to ``--json FILE``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from service.tools.loadtest.plan import (
    HTTP_SCENARIOS,
    TCP_SCENARIOS,
    Plan,
    PlanError,
    parse_http_target,
    parse_mix,
    parse_tcp_target,
)

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("target", choices=("http", "tcp"), help="protocol to drive")
    parser.add_argument(
        "address", help="http: URL (a base URL for the built-in scenarios); tcp: HOST:PORT"
    )
    parser.add_argument(
        "-s",
        "--scenario",
        choices=HTTP_SCENARIOS + TCP_SCENARIOS,
        help="what to send: url (GET the URL; http default), info, events, "
        "summary, hash, mixed; tcp-ping (tcp default), tcp-events",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=64,
        help="connections, one request in flight each (default 64)",
    )
    load.add_argument(
        "-r",
        "--rate",
        type=float,
        help="open loop: this many requests/s in total, latency measured from "
        "each request's intended send time (default: closed loop)",
    )
    load.add_argument(
        "-d", "--duration", type=float, help="seconds to measure (default 10 unless --requests)"
    )
    load.add_argument("-n", "--requests", type=int, help="measure exactly this many requests")
    load.add_argument(
        "--warmup", type=float, default=0.0, help="seconds of load before measuring (default 0)"
    )
    load.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=10.0,
        help="seconds before a request counts as a timeout (default 10)",
    )
    load.add_argument(
        "-w",
        "--workers",
        type=int,
        default=1,
        help="processes sharing the connections and rate (default 1)",
    )
    load.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    data = parser.add_argument_group("scenario data")
    data.add_argument(
        "--mix",
        default="info=5,events=3,summary=1,hash=1",
        help="weights of the mixed scenario (default %(default)s)",
    )
    data.add_argument(
        "--batch-size", type=int, default=10, help="events per POST /v1/events (default 10)"
    )
    data.add_argument(
        "--users",
        type=int,
        default=1000,
        help="user ids u1..uN for summary and events (default 1000)",
    )
    data.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra HTTP header (repeatable)",
    )
    data.add_argument("--seed", type=int, help="random seed of the request pools")
    out = parser.add_argument_group("report")
    out.add_argument("--json", metavar="FILE", help="write the full report as JSON ('-': stdout)")
    out.add_argument("--slo-p99-ms", type=float, help="exit 1 when p99 latency is above this")
    out.add_argument(
        "--slo-error-rate", type=float, help="exit 1 when the error rate (0..1) is above this"
    )


def build_plan(args: argparse.Namespace) -> Plan:
    """Validate the arguments into a :class:`Plan` (:class:`PlanError` names the culprit)."""
    if args.target == "http":
        host, port, path = parse_http_target(args.address)
        scenario = args.scenario or "url"
        if scenario not in HTTP_SCENARIOS:
            raise PlanError(f"--scenario {scenario} is for tcp targets")
    else:
        host, port = parse_tcp_target(args.address)
        path = ""
        scenario = args.scenario or "tcp-ping"
        if scenario not in TCP_SCENARIOS:
            raise PlanError(f"--scenario {scenario} is for http targets")
    for name in ("concurrency", "workers", "batch_size", "users"):
        if getattr(args, name) < 1:
            raise PlanError(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers > args.concurrency:
        raise PlanError("--workers cannot exceed --concurrency (each needs a connection)")
    for name in ("rate", "duration", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise PlanError(f"--{name} must be above 0")
    if args.warmup < 0:
        raise PlanError("--warmup must not be negative")
    if args.requests is not None and args.requests < 1:
        raise PlanError("--requests must be at least 1")
    if args.slo_error_rate is not None and not 0 <= args.slo_error_rate <= 1:
        raise PlanError("--slo-error-rate is a fraction between 0 and 1")
    headers = []
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip() or any(c in raw for c in "\r\n"):
            raise PlanError(f"--header {raw!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    duration = args.duration if args.duration or args.requests else 10.0
    return Plan(
        kind=args.target,
        host=host,
        port=port,
        path=path,
        scenario=scenario,
        concurrency=args.concurrency,
        rate=args.rate,
        duration=duration,
        requests=args.requests,
        warmup=args.warmup,
        timeout=args.timeout,
        workers=args.workers,
        batch_size=args.batch_size,
        users=args.users,
        mix=parse_mix(args.mix),
        headers=tuple(headers),
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    # Imported here so `service serve` does not load the client's machinery.
    from service.tools.loadtest.report import Report
    from service.tools.loadtest.workers import Progress, WorkerFailed, run_local, run_workers

    try:
        plan = build_plan(args)
    except PlanError as exc:
        print(f"service loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = Progress()
    try:
        if plan.workers == 1:
            parts = run_local(plan, args.loop, progress)
        else:
            parts = run_workers(plan, args.loop, progress)
    except WorkerFailed as exc:
        progress.finish()
        print(f"service loadtest: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    progress.finish()
    report = Report.merge(plan, parts)
    report.slo_p99_ms = args.slo_p99_ms
    report.slo_error_rate = args.slo_error_rate
    if args.json:
        data = orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
        if args.json == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            Path(args.json).write_bytes(data)
    if args.json != "-":
        print(report.text())
    if report.requests == 0:
        print("service loadtest: no answers at all", file=sys.stderr)
        return EXIT_BROKEN
    return EXIT_BROKEN if report.slo_breaches() else EXIT_OK
