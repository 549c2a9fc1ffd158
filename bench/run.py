"""`make bench`: every benchmark against its peer baseline, in one run.

Each ``bench/bench_*.py`` module has ``run(duration: float) -> list[Row]``;
a row compares the service with a baseline measured in the same run (bare
aiohttp, a bare asyncio echo server, wrk), so the ratio is meaningful even on
a noisy machine. The table is printed and written to ``bench/results/``.

    make bench                      # everything
    make bench BENCH_ARGS="--only http --duration 5"
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Row = dict[str, Any]  # name, value, unit, baseline, baseline_value, ratio, target, note


def machine() -> str:
    import os

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def table(rows: list[Row]) -> str:
    out = ["| benchmark | result | baseline (same run) | ratio | target |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        base = (
            f"{r['baseline']}: {r['baseline_value']:,.0f} {r['unit']}" if r.get("baseline") else "-"
        )
        out.append(
            f"| {r['name']} | {r['value']:,.0f} {r['unit']} | {base} | {ratio} "
            f"| {r.get('target') or '-'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", default=[], help="run only bench_<NAME>.py (repeatable)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measured run (default 10)"
    )
    args = parser.parse_args(argv)
    names = sorted(p.stem[len("bench_") :] for p in (ROOT / "bench").glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only]
    rows: list[Row] = []
    failed = False
    for name in names:
        mod = importlib.import_module(f"bench.bench_{name}")
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            rows.extend(mod.run(args.duration))
        except Exception as exc:  # report and go on with the others
            print(f"!! {name} failed: {exc!r}", file=sys.stderr)
            failed = True
    text = f"Machine: {machine()}\n\n{table(rows)}\n"
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / "latest.json").write_text(
        json.dumps({"when": stamp, "machine": machine(), "rows": rows}, indent=2)
    )
    (out / "latest.md").write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
