"""``scanstream codes mint|verify``: in-process through scanstream.cli.main, and once as a real process."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from scanstream.engine import codec as ref
from scanstream.cli import main
from scanstream.engine.config import CONFIG_ENV
from scanstream.engine.keys import KeyTable
from scanstream.engine.verdicts import Verdict
from scanstream.ext import codec as cy

REPO = Path(__file__).resolve().parents[1]
CODE_7 = "2000E00058003RJ08V9QZJM3"  # DESIGN.md: tenant 7, batch 42, serial 123456, unit, key_id 0
KEY0 = bytes(range(16))
KEY1 = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")
KEYS = KeyTable({(1, 0): KEY0, (7, 0): KEY0, (7, 1): KEY1, (65535, 0): KEY0})


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    """Run as a user would, from the repository root with the default config/local.toml."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(REPO)


def stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


# --- verify -----------------------------------------------------------------------------------

def test_verify_ok_prints_fields(capsys):
    assert main(["codes", "verify", CODE_7]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{CODE_7}  ok  kind=unit key_id=0 tenant=7 batch=42 serial=123456"]


def test_verify_bad_code_returns_1(capsys):
    bad = CODE_7[:-1] + "4"
    assert main(["codes", "verify", bad]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(bad) and " bad_mac " in line and "tenant=7" in line and "serial=123456" in line


def test_verify_mixed_returns_1_and_one_line_each(capsys):
    inputs = [CODE_7, "not-a-code", "2400E00058000033KDGF8CHG", "https://q.example.cn/c/" + CODE_7 + "?from=wechat"]
    assert main(["codes", "verify", *inputs]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert [line.split()[1] for line in lines] == ["ok", "malformed", "ok", "ok"]
    assert lines[1] == "not-a-code  malformed"  # no fields for a malformed code
    assert "key_id=1" in lines[2] and "serial=99" in lines[2]


def test_verify_unknown_tenant(capsys):
    code = cy.encode(KEY0, 8, 1, 2)
    assert main(["codes", "verify", code]) == 1
    assert capsys.readouterr().out.split()[1:3] == ["unknown_tenant", "kind=unit"]


def test_verify_json_parses(capsys):
    case_code = "2G00E00058000033XC4GH2A9"
    assert main(["codes", "verify", "--json", CODE_7, case_code, "xyz"]) == 1
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {"code": CODE_7, "verdict": "ok", "kind": "unit", "key_id": 0, "tenant": 7, "batch": 42, "serial": 123456},
        {"code": case_code, "verdict": "ok", "kind": "case", "key_id": 0, "tenant": 7, "batch": 42, "serial": 99},
        {"code": "xyz", "verdict": "malformed"},
    ]


def test_verify_reads_stdin(monkeypatch, capsys):
    stdin(monkeypatch, f"{CODE_7}\n{CODE_7.lower()}\r\n2000-E000-5800-3RJ0-8V9Q-ZJM3\n")
    assert main(["codes", "verify", "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["verdict"] for r in rows] == ["ok"] * 3
    assert [r["code"] for r in rows] == [CODE_7, CODE_7.lower(), "2000-E000-5800-3RJ0-8V9Q-ZJM3"]
    assert {r["serial"] for r in rows} == {123456}


def test_verify_stdin_with_a_bad_line_returns_1(monkeypatch, capsys):
    stdin(monkeypatch, f"{CODE_7}\n{CODE_7[:-1]}\n")
    assert main(["codes", "verify"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[1] == "ok" and lines[1].split()[1] == "malformed"


def test_verify_with_explicit_config(tmp_path, capsys):
    conf = tmp_path / "only8.toml"
    conf.write_text('[[tenants]]\nid = 8\nkeys = [{ key_id = 0, hex = "000102030405060708090a0b0c0d0e0f" }]\n')
    code8 = cy.encode(KEY0, 8, 1, 2)
    assert main(["--config", str(conf), "codes", "verify", code8]) == 0
    assert capsys.readouterr().out.split()[1] == "ok"
    assert main(["--config", str(conf), "codes", "verify", CODE_7]) == 1  # tenant 7 unknown here
    assert capsys.readouterr().out.split()[1] == "unknown_tenant"


def test_bad_config_exits_3(tmp_path, capsys):
    conf = tmp_path / "bad.toml"
    conf.write_text("[[tenants]]\nid = 70000\nkeys = []\n")
    assert main(["--config", str(conf), "codes", "verify", CODE_7]) == 3
    err = capsys.readouterr().err
    assert "configuration error" in err and "tenants[0].id" in err


# --- mint -------------------------------------------------------------------------------------

def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.decode("ascii").split("\n")[:-1]


def test_mint_1000_to_file(tmp_path, capsys):
    out = tmp_path / "codes.txt"
    assert main(["codes", "mint", "--tenant", "7", "--batch", "42", "--count", "1000", "--out", str(out)]) == 0
    lines = read_lines(out)
    assert len(lines) == 1000 and len(set(lines)) == 1000
    result = cy.verify_batch(lines, KEYS)
    assert (result.verdict == Verdict.OK).all()
    assert result.serial.tolist() == list(range(1000))
    assert set(result.tenant.tolist()) == {7} and set(result.batch.tolist()) == {42}
    assert set(result.kind.tolist()) == {0}
    # default key: the tenant's highest configured key_id (1 for tenant 7)
    assert set(result.key_id.tolist()) == {1}
    assert lines[:3] == [ref.encode(KEY1, 7, 42, s, key_id=1) for s in range(3)]
    assert capsys.readouterr().out == ""  # nothing on stdout when --out is given


def test_mint_start_kind_key_id_url_prefix(tmp_path):
    out = tmp_path / "urls.txt"
    prefix = "https://q.example.cn/c/"
    assert main(["codes", "mint", "--tenant", "7", "--batch", "42", "--count", "25", "--start", "123450",
                 "--kind", "case", "--key-id", "0", "--url-prefix", prefix, "--out", str(out)]) == 0
    lines = read_lines(out)
    assert lines == [prefix + ref.encode(KEY0, 7, 42, s, kind=1, key_id=0) for s in range(123450, 123475)]
    result = cy.verify_batch(lines, KEYS)
    assert (result.verdict == Verdict.OK).all()
    assert result.serial.tolist() == list(range(123450, 123475))
    assert set(result.kind.tolist()) == {1} and set(result.key_id.tolist()) == {0}


def test_mint_then_verify_round_trip(tmp_path, monkeypatch, capsys):
    out = tmp_path / "c.txt"
    assert main(["codes", "mint", "--tenant", "65535", "--batch", "16777215", "--count", "3",
                 "--start", "4294967293", "--out", str(out)]) == 0
    stdin(monkeypatch, out.read_text())
    assert main(["codes", "verify", "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["serial"] for r in rows] == [4294967293, 4294967294, 4294967295]
    assert rows[-1]["code"] == "23ZZZZZZZZZZZZZZ5DNM2DCJ"


def test_mint_to_stdout(capsysbinary):
    assert main(["codes", "mint", "--tenant", "7", "--batch", "42", "--count", "2", "--start", "123456",
                 "--key-id", "0"]) == 0
    out = capsysbinary.readouterr().out
    assert out == (CODE_7 + "\n" + ref.encode(KEY0, 7, 42, 123457) + "\n").encode()


def test_mint_count_zero_writes_nothing(tmp_path):
    out = tmp_path / "empty.txt"
    assert main(["codes", "mint", "--tenant", "7", "--batch", "1", "--count", "0", "--out", str(out)]) == 0
    assert out.read_bytes() == b""


def test_mint_unknown_tenant_exits_3(tmp_path, capsys):
    out = tmp_path / "x.txt"
    assert main(["codes", "mint", "--tenant", "99", "--batch", "1", "--count", "1", "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "tenant 99" in err and "configuration error" in err
    assert not out.exists()  # nothing is written when the key is missing


def test_mint_unknown_key_id_exits_3(capsys):
    assert main(["codes", "mint", "--tenant", "7", "--batch", "1", "--count", "1", "--key-id", "3"]) == 3
    err = capsys.readouterr().err
    assert "key_id 3" in err and "tenant 7" in err


@pytest.mark.parametrize("argv,needle", [
    (["--count", "-1"], "--count"),
    (["--count", "2", "--start", "4294967295"], "4294967295..4294967296"),
    (["--count", "1", "--start", "-1"], "serials"),
    (["--batch", "16777216"], "batch"),
    (["--batch", "-1"], "batch"),
])
def test_mint_bad_numbers_exit_2(argv, needle, capsys):
    base = {"--tenant": "7", "--batch": "1", "--count": "1"}
    args = dict(base)
    args.update(dict(zip(argv[::2], argv[1::2])))
    flat = [x for kv in args.items() for x in kv]
    assert main(["codes", "mint", *flat]) == 2
    assert needle in capsys.readouterr().err


def test_mint_huge_batch_exits_2(capsys):
    assert main(["codes", "mint", "--tenant", "7", "--batch", "2147483648", "--count", "1"]) == 2
    assert "batch" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    for argv in (["codes"], ["codes", "mint", "--tenant", "7"], ["codes", "mint", "--tenant", "7", "--batch", "1",
                                                                 "--count", "1", "--kind", "pallet"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


# --- the installed console script ---------------------------------------------------------------

def _script() -> str:
    beside = Path(sys.executable).with_name("scanstream")
    found = str(beside) if beside.exists() else shutil.which("scanstream")
    assert found, "the scanstream console script is not installed (pip install -e .)"
    return found


def test_console_script_subprocess(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    run = subprocess.run([_script(), "codes", "verify", CODE_7], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{CODE_7}  ok  kind=unit key_id=0 tenant=7 batch=42 serial=123456"]
    bad = subprocess.run([_script(), "codes", "verify", "--json"], input=CODE_7[:-1] + "0\n", cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert orjson.loads(bad.stdout)["verdict"] == "bad_mac"
