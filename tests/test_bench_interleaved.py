"""make bench's interleaved meter: two clients at once, taking turns, one meter for both."""

from __future__ import annotations

import json

import pytest

from bench import bench_loadtest as bl
from tests.support.process import require_tool


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_interleaved_turns_meter_both_clients_and_check_their_own_reports(kind: str) -> None:
    require_tool("taskset")
    if kind == "tcp":
        require_tool("cc")
        exe = bl._c_client()
        assert exe is not None
        source = bl.BARE_PONG
    else:
        require_tool("wrk")
        source = bl.BARE_HTTP
    with bl._server(source) as port:
        if kind == "tcp":
            ours = bl._ours_turns(["tcp", f"127.0.0.1:{port}", "-s", "tcp-ping", "-c", "32"])
            theirs, size = bl._c_turns(exe, port), len(b"PONG\n")
        else:
            url = f"http://127.0.0.1:{port}/v1/info"
            ours = bl._ours_turns(["http", url, "-c", "64"])
            theirs, size = bl._wrk_turns(url), bl._response_bytes(url)
        mine, base, own = bl._interleaved(ours, theirs, size, 2)
    # theirs, ours, theirs, ..., theirs: every turn of ours between two of theirs.
    assert len(base) == len(mine) + 1
    assert len(mine) >= 4
    assert min(mine) > 0
    assert min(base) > 0
    # Each report was checked against its turns (at least as many answers, no errors).
    assert own[0] is not None
    assert own[0] > sum(mine) * bl.SLICE * 0.9
    assert (own[1] is None) == (kind == "tcp")


def test_reports_that_do_not_add_up_with_their_turns_are_rejected() -> None:
    report = json.dumps({"requests": 99, "errors": 0, "error_kinds": {}})
    assert bl._check_ours(report, 99) == 99
    with pytest.raises(RuntimeError, match="counted 99"):
        bl._check_ours(report, 100)
    with pytest.raises(RuntimeError, match="errors"):
        bl._check_ours(json.dumps({"requests": 99, "errors": 1, "error_kinds": {"reset": 1}}), 9)
    wrk = "  1000 requests in 2.00s, 173.00KB read\n"
    assert bl._check_wrk(wrk, 1000) == 1000
    with pytest.raises(RuntimeError):
        bl._check_wrk(wrk, 1001)
    with pytest.raises(RuntimeError):
        bl._check_wrk(wrk + "  Non-2xx or 3xx responses: 5\n", 10)


def test_an_interleaved_row_compares_each_turn_with_the_reference_turns_either_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reference turns alternate 100 and 400 (geometric mean 200 around each of
    # ours); ours' turns fall from 200 to 100 over the run, so its thirds differ.
    theirs = [100.0 if i % 2 == 0 else 400.0 for i in range(10)]
    ours = [200.0, 200.0, 200.0, 160.0, 160.0, 160.0, 100.0, 100.0, 100.0]
    monkeypatch.setattr(bl, "_interleaved", lambda *args: (ours, theirs, [12_345, None]))
    turns = bl._Turns("ours", lambda seconds: [], bl._check_ours)
    row = bl._interleaved_row(turns, turns, 5, "a row", "rt/s", ">= 0.90")
    assert row["ratio"] == pytest.approx(0.8)  # the median of 1, 1, 1, .8, .8, .8, .5, .5, .5
    assert row["baseline_value"] == pytest.approx(200.0)
    assert "medians of the run's thirds: 1.00 0.80 0.50" in row["note"]
    assert "ours reported 12,345 answers" in row["note"]
