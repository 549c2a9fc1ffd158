"""``service loadtest`` arguments (placeholder until the load-test issue lands)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=("http", "tcp"))


def run(args: argparse.Namespace) -> int:
    raise SystemExit("service loadtest: not implemented yet")
