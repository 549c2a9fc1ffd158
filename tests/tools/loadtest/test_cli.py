"""``service loadtest`` end to end: arguments, JSON report, SLO exit status, workers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from service.cli import main
from service.tools.loadtest.workers import Progress
from tests.tools.loadtest.servers import CountingApp, app_in_thread

JSON_KEYS = {
    "requests",
    "errors",
    "duration_seconds",
    "requests_per_second",
    "latency_ms",
    "statuses",
}


def loadtest(*argv: str) -> int:
    return main(["loadtest", *argv])


def test_json_report_has_the_contract_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = CountingApp()
    out = tmp_path / "report.json"
    with app_in_thread(target) as port:
        code = loadtest(
            "http",
            f"http://127.0.0.1:{port}/v1/info",
            "-c",
            "4",
            "-d",
            "0.5",
            "--json",
            str(out),
            "--slo-p99-ms",
            "10000",
            "--slo-error-rate",
            "0",
        )
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) >= JSON_KEYS
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert set(report["latency_ms_co_corrected"]) == set(report["latency_ms"])
    assert report["requests"] == target.count > 0
    assert report["statuses"] == {"200": target.count}
    assert report["errors"] == 0
    assert report["slo"]["broken"] == []
    text = capsys.readouterr()
    assert "req/s" in text.out
    assert "SLO         met" in text.out
    assert text.err == ""  # progress only on a terminal


def test_broken_latency_slo_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with app_in_thread(CountingApp(delay=0.01)) as port:
        code = loadtest(
            "http", f"http://127.0.0.1:{port}/", "-c", "2", "-n", "20", "--slo-p99-ms", "5"
        )
    assert code == 1
    assert "BROKEN: p99" in capsys.readouterr().out


def test_broken_error_rate_slo_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with app_in_thread(CountingApp(status=lambda n: 500 if n % 10 == 0 else 200)) as port:
        code = loadtest(
            "http",
            f"http://127.0.0.1:{port}/",
            "-c",
            "1",
            "-n",
            "100",
            "--slo-error-rate",
            "0.05",
            "--json",
            "-",
        )
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 10
    assert report["error_kinds"] == {"http_5xx": 10}
    assert report["slo"]["broken"] == ["error rate 10.0000% > 5.0000%"]


def test_no_answer_at_all_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.process import free_port

    assert loadtest("http", f"http://127.0.0.1:{free_port()}/", "-c", "1", "-d", "0.3") == 1
    captured = capsys.readouterr()
    assert "refused" in captured.out
    assert "no answers at all" in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["http", "https://127.0.0.1:1/"],
        ["http", "http://127.0.0.1:1/", "--scenario", "tcp-ping"],
        ["tcp", "127.0.0.1", "--scenario", "tcp-ping"],
        ["tcp", "127.0.0.1:1", "--scenario", "info"],
        ["http", "http://127.0.0.1:1/", "-c", "2", "-w", "3"],
        ["http", "http://127.0.0.1:1/", "--rate", "0"],
        ["http", "http://127.0.0.1:1/", "--mix", "info=1,nope=2"],
        ["http", "http://127.0.0.1:1/", "-H", "no colon"],
        ["http", "http://127.0.0.1:1/", "--slo-error-rate", "5"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert loadtest(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("service loadtest: ")
    assert len(err.splitlines()) == 1


def test_workers_merge_histograms_and_counts(tmp_path: Path) -> None:
    """Two processes, 400 requests in all: the server saw exactly 400, the report says 400."""
    target = CountingApp()
    out = tmp_path / "report.json"
    with app_in_thread(target) as port:
        code = loadtest(
            "http",
            f"http://127.0.0.1:{port}/",
            "-c",
            "4",
            "-w",
            "2",
            "-n",
            "400",
            "--json",
            str(out),
        )
    report = json.loads(out.read_text())
    assert code == 0
    assert report["workers"] == 2
    assert report["requests"] == target.count == 400
    assert report["latency_ms"]["max"] >= report["latency_ms"]["p99"] > 0


def test_progress_is_written_only_to_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, tty = io.StringIO(), Tty()
    for stream in (quiet, tty):
        progress = Progress(stream)
        progress.t_last -= 1.5  # as if a second and a half had passed
        progress.update(1500, 3)
        progress.finish()
    assert quiet.getvalue() == ""
    assert "req/s" in tty.getvalue()
    assert "3 errors" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
