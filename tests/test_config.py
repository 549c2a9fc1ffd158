"""Settings: defaults == config/default.toml, file and env layering, one-line config errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from service.settings import ConfigError, Settings, load_settings
from tests.support.process import ROOT, service_env

DEFAULT_TOML = ROOT / "config" / "default.toml"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SERVICE_* variable from the outer environment leaks into a test."""
    for key in list(os.environ):
        if key.upper().startswith("SERVICE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _defaults() -> dict[str, dict[str, Any]]:
    """The embedded defaults: the field defaults and the domain's layer of defaults."""
    settings = Settings()
    data: dict[str, dict[str, Any]] = settings.model_dump(mode="json")
    # A table entry lists what it sets (the rest comes from the shared settings).
    data["downstream"]["services"] = {
        name: entry.model_dump(mode="json", exclude_unset=True)
        for name, entry in settings.downstream.services.items()
    }
    # A table with no entries has nothing to list.
    for section, table in (("pipeline", "stages"), ("downstream", "services")):
        if not data[section][table]:
            del data[section][table]
    return data


def test_default_toml_lists_every_setting_with_its_default(clean_env: pytest.MonkeyPatch) -> None:
    """config/default.toml and the Settings defaults agree key by key (and type by type)."""
    with DEFAULT_TOML.open("rb") as fh:
        toml = tomllib.load(fh)
    defaults = _defaults()
    assert sorted(toml) == sorted(defaults), "sections differ"
    for section, values in defaults.items():
        assert sorted(toml[section]) == sorted(values), f"[{section}] keys differ"
        for key, value in values.items():
            got = toml[section][key]
            assert got == value, f"{section}.{key}: default.toml {got!r} != code {value!r}"
            assert type(got) is type(value), f"{section}.{key}: {type(got)} vs {type(value)}"


def test_default_toml_loads_to_the_default_settings(clean_env: pytest.MonkeyPatch) -> None:
    assert load_settings(DEFAULT_TOML) == Settings()


def test_config_file_layers_over_defaults(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[http]\nport = 9000\n[log]\naccess_log_sample = 0.5\n")
    s = load_settings(cfg)
    assert s.http.port == 9000
    assert s.log.access_log_sample == 0.5
    assert s.http.host == "0.0.0.0"  # untouched keys of a section keep their default
    assert s.tcp.port == 8888


def test_service_config_env_names_the_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[admin]\ndebug = true\n")
    clean_env.setenv("SERVICE_CONFIG", str(cfg))
    assert load_settings().admin.debug is True


def test_env_overrides_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[http]\nport = 9000\nhost = '127.0.0.1'\n")
    clean_env.setenv("SERVICE_HTTP__PORT", "9100")
    clean_env.setenv("SERVICE_LOOP__KIND", "asyncio")
    s = load_settings(cfg)
    assert s.http.port == 9100
    assert s.http.host == "127.0.0.1"
    assert s.loop.kind == "asyncio"


def test_settings_are_frozen(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.http.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ("[http]\nprot = 1\n", "http.prot"),
        ("[htp]\nport = 1\n", "htp"),
        ("[http]\nport = 'eighty'\n", "http.port"),
        ("[http]\nport = 70000\n", "http.port"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[shutdown]\ngrace_seconds = -1\n", "shutdown.grace_seconds"),
    ],
)
def test_bad_file_raises_config_error_naming_the_setting(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, toml: str, setting: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert setting in str(err.value)
    assert "\n" not in str(err.value)


def test_same_port_twice_is_an_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SERVICE_HTTP__PORT", "9000")
    clean_env.setenv("SERVICE_ADMIN__PORT", "9000")
    with pytest.raises(ConfigError, match=r"admin\.port"):
        load_settings()


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("SERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", *args],
        env={**base, **service_env(), **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def _bad_config_cases(tmp: Path) -> list[tuple[dict[str, str], list[str], str]]:
    unknown = tmp / "unknown.toml"
    unknown.write_text("[http]\nportt = 1\n")
    invalid = tmp / "invalid.toml"
    invalid.write_text("[http\nport = 1\n")
    unreadable = tmp / "missing.toml"
    return [
        ({}, ["--config", str(unknown)], "http.portt"),
        ({"SERVICE_HTTP__PORT": "x"}, [], "http.port"),
        ({"SERVICE_ADMIN__PORT": "65536"}, [], "admin.port"),
        ({"SERVICE_LOG__ACCESS_LOG_SAMPLE": "2"}, [], "log.access_log_sample"),
        ({}, ["--config", str(unreadable)], "missing.toml"),
        ({"SERVICE_CONFIG": str(unreadable)}, [], "missing.toml"),
        ({}, ["--config", str(invalid)], "invalid.toml"),
        ({"SERVICE_HTTP__PROT": "1"}, [], "SERVICE_HTTP__PROT"),
        ({"SERVICE_NOPE": "1"}, [], "SERVICE_NOPE"),
    ]


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    """Every kind of bad configuration: exit 2, one stderr line naming it, no traceback."""
    cases = _bad_config_cases(tmp_path)
    with ThreadPoolExecutor(4) as pool:  # each run is mostly interpreter start-up
        procs = list(pool.map(lambda case: _serve(case[0], *case[1]), cases))
    for (env, args, setting), proc in zip(cases, procs, strict=True):
        case = f"env={env} args={args}: stderr={proc.stderr!r} stdout={proc.stdout[-500:]!r}"
        assert proc.returncode == 2, case
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, case
        assert setting in lines[0], case
        assert "Traceback" not in proc.stderr + proc.stdout, case
