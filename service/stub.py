"""The downstream stub server (placeholder until the downstream issue lands)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", choices=("users", "orders"), required=True)
    parser.add_argument("--port", type=int, required=True)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("service stub: not implemented yet")
