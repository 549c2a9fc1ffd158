"""How many workers ``workers.count = 0`` means: one per CPU this process may use.

Usable, not installed: the CPUs in the process's affinity mask
(``taskset``, a cpuset) and, in a container, the CPU quota of its cgroup
(``docker run --cpus 2`` on a 64-core host is 2), rounded up as the JVM's
``ActiveProcessorCount`` does. Only the process's own cgroup root is read
(what a container sees); a quota set further up is not looked for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def worker_count(count: int) -> int:
    """``count``, or the usable CPUs for 0."""
    return count if count > 0 else usable_cpus()


def usable_cpus(cgroup: Path = CGROUP) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The cgroup's CPU limit in CPUs (v2 ``cpu.max``, else v1 CFS quota); ``None``: none."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
