"""Fault test 6, secrets: signing keys and campaign seeds never leave the configuration.

After the other fault tests of the session (crash, race, outage, fuzz: each scenario has fresh
random keys, given as hex, through the environment or in a key file, and fresh seeds), every
file they left (worker logs, the private Redis's log, chdb data) and every message of their
``scan-results``, ``awards``, ``alerts`` and dead-letter topics is searched for each key (raw
bytes, hex in any case), each seed and each seed's derived draw key.  Run alone, the test
makes its own small crash and fuzz runs first.  Configuration errors about a key or a seed are
searched too.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from . import checks, inputs, processes, scenario
from . import harness as h

SCALE = h.scale()
pytestmark = pytest.mark.skipif(processes.SCANSTREAM is None, reason="the scanstream console script is not installed")


@pytest.mark.timeout(600 if SCALE.name == "short" else 3600)
def test_keys_and_seeds_appear_in_no_log_topic_or_error(broker, redis_url, tmp_path):
    ran = {sc.label for sc in scenario.ARTIFACTS}
    if not {"crash", "fuzz"} <= ran:  # run alone: make a small crash run and a fuzz run of our own
        from .test_fuzz import Codes, corpus

        small = replace(SCALE, crash_scans=3_000, crash_kills=1)
        checks.assert_report(h.crash_scenario(tmp_path / "crash", broker.bootstrap, redis_url, small))
        tenant = inputs.TenantSpec(7, os.urandom(16), key_id=1, via="env")
        codes = Codes(tenant.key, os.urandom(16))
        checks.assert_report(h.fuzz_worker_scenario(tmp_path / "fuzz", broker.bootstrap, redis_url, small,
                                                    corpus(codes, 500), tenant, codes.genuine))
    scenarios = [sc for sc in scenario.ARTIFACTS if sc.root.exists()]
    found, files, messages = checks.grep_secrets(scenarios)
    logs = [p for sc in scenarios for p in sc.root.glob("worker-*.log")]
    print(f"searched {files} files ({len(logs)} worker logs) and {messages} messages of {len(scenarios)} scenarios "
          f"({sorted(sc.label for sc in scenarios)})")
    assert logs and messages > 0
    assert not found, found[:20]


def _config(tmp_path: Path, key_line: str, seed_line: str) -> Path:
    path = tmp_path / f"c-{len(list(tmp_path.glob('c-*.toml')))}.toml"
    path.write_text(f"""
[[tenants]]
id = 7
keys = [{{ key_id = 0, {key_line} }}]

[[campaigns]]
id = "c"
tenant = 7
start = 2026-11-01T00:00:00+08:00
end = 2027-01-01T00:00:00+08:00
budget_cents = 100
daily_cap = 1
{seed_line}
tiers = [{{ name = "a", cents = 1, probability = 0.1, stock = 1 }}]
""", encoding="utf-8")
    return path


def _error_of(config: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([processes.SCANSTREAM, "--config", str(config), "query", "SELECT 1"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **(env or {})}, cwd=config.parent)
    assert out.returncode == 3, (out.returncode, out.stdout, out.stderr)  # a configuration error
    return out.stdout + out.stderr


def _leaks(text: str, key: bytes) -> bool:
    """Whether ``text`` shows any 8 consecutive hex digits of ``key`` (in any case)."""
    lower, hexed = text.lower(), key.hex()
    return any(hexed[i:i + 8] in lower for i in range(len(hexed) - 7))


@pytest.mark.timeout(300)
def test_configuration_errors_never_show_a_key(tmp_path):
    key = os.urandom(16)
    hexed = key.hex()
    cases = {
        "31 hex digits": (f'hex = "{hexed[:31]}"', {}),
        "33 hex digits": (f'hex = "{hexed}a"', {}),
        "a non-hex digit": (f'hex = "{hexed[:10]}g{hexed[11:]}"', {}),
        "hex as a number": (f"hex = 0x{hexed}", {}),
        "hex as an array": (f'hex = ["{hexed}"]', {}),
        "broken TOML": (f'hex = "{hexed}', {}),
        "short key in env": ('env = "FAULTS_BAD_KEY"', {"FAULTS_BAD_KEY": hexed[:30]}),
        "junk key in env": ('env = "FAULTS_BAD_KEY"', {"FAULTS_BAD_KEY": hexed + "zz"}),
        "short key file": (f'file = "{tmp_path / "k.hex"}"', {}),
        "two ways": (f'hex = "{hexed}", env = "X"', {}),
    }
    (tmp_path / "k.hex").write_text(hexed[:20] + "\n")
    shown = {}
    for name, (line, env) in cases.items():
        text = _error_of(_config(tmp_path, line, 'seed = "not-the-secret"'), env)
        shown[name] = text.strip().splitlines()[-1][:200]
        assert not _leaks(text, key), (name, text)
    print(shown)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed_line", ['seed = ["{seed}"]', 'seed = {{ value = "{seed}" }}'])
def test_configuration_errors_never_show_a_seed(tmp_path, seed_line):
    seed = f"seed-{os.urandom(8).hex()}"
    text = _error_of(_config(tmp_path, f'hex = "{os.urandom(16).hex()}"', seed_line.format(seed=seed)))
    assert "campaigns[0].seed" in text
    assert seed not in text, text
