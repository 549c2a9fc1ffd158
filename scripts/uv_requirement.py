"""Print uv's requirement line, pinned and hashed, from uv.lock.

`make` and the Dockerfile need uv before uv can read the lock, so pip installs
it first: ``pip install --require-hashes --no-deps -r <this output>``. The
version and hashes are the ones uv.lock records for uv (a dev tool, locked like
the others), so updating the lock updates the installer too, and pip refuses a
download whose hash the lock does not list.

    python scripts/uv_requirement.py [uv.lock] > uv-requirement.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_LOCK = Path(__file__).resolve().parent.parent / "uv.lock"


def requirement(lock: dict[str, Any], name: str = "uv") -> str:
    """``name==version --hash=sha256:...`` for every file the lock lists for it."""
    found = [p for p in lock.get("package", []) if p["name"] == name]
    if len(found) != 1:
        raise SystemExit(f"uv_requirement: uv.lock has {len(found)} entries for {name}, not 1")
    [package] = found
    files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
    hashes = sorted({f["hash"] for f in files})
    if not hashes:
        raise SystemExit(f"uv_requirement: uv.lock lists no hashes for {name}")
    return " ".join([f"{name}=={package['version']}", *(f"--hash={h}" for h in hashes)])


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_LOCK
    with path.open("rb") as f:
        print(requirement(tomllib.load(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
