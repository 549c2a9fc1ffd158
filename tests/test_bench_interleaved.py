"""make bench's interleaved tcp-ping meter: two clients at once, taking turns, one meter."""

from __future__ import annotations

from bench import bench_loadtest
from tests.helpers import require_tool


def test_interleaved_turns_meter_both_clients_and_check_ours_against_its_own_report() -> None:
    require_tool("cc")
    require_tool("taskset")
    exe = bench_loadtest._c_client()
    assert exe is not None
    with bench_loadtest._server(bench_loadtest.BARE_PONG) as port:
        ours, c, own = bench_loadtest._interleaved(port, exe, ("ours", "C"), 2)
    # C, ours, C, ..., C: every slice of ours between two of C.
    assert len(c) == len(ours) + 1
    assert len(ours) >= 4
    assert min(ours) > 0
    assert min(c) > 0
    (requests, seen), = own
    assert requests >= seen > 0
