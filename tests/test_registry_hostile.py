"""Hostile registry files (issue 12 part 7): every bad input is one clear error, never a traceback.

Each error names the file, the line and the field.  In process through ``Registry.load``, and
once through ``scanstream run`` as a real process.  Also here: ``codes mint --out`` into a
folder that does not exist (an error message, not a traceback).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scanstream.cli import main
from scanstream.engine.config import CONFIG_ENV
from scanstream.engine.registry import MAX_FIELD, Registry, RegistryError

REPO = Path(__file__).resolve().parents[1]
BOM = "\ufeff"

GOOD = {
    "batches.csv": "tenant,batch,kind,sku,product,activated,size\n"
                   "7,42,unit,BEER-500,Lager 500 ml,1,1000000\n"
                   "7,43,unit,BEER-500,\"Lager, spring run\",0,1000\n",
    "dealers.csv": "dealer_id,tenant,name,channel,regions,manager,webhook\n"
                   "D-GD,7,Guangdong Key Accounts,KA,44,wang.li,\n"
                   "D-SH,7,\"Shanghai \"\"East\"\"\",traditional,31;3201,li.na,\n"
                   "D-T8,8,Another brand's dealer,KA,11,zhao.min,\n",
    "shipments.csv": "tenant,batch,kind,serial_from,serial_to,dealer_id,shipped_at\n"
                     "7,42,unit,0,999,D-GD,2026-11-01\n"
                     "7,42,unit,1000,1999,D-SH,2026-11-01\n",
    "stores.csv": "store_id,tenant,dealer_id,region,channel\n"
                  "S-GZ-1,7,D-GD,440106,KA\n",
}


def write(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return directory


def with_line(name: str, line: int, text: str) -> dict[str, str]:
    """GOOD with line ``line`` (1 = the header) of file ``name`` replaced by ``text``."""
    lines = GOOD[name].splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    return {**GOOD, name: "".join(lines)}


def with_row(name: str, text: str) -> dict[str, str]:
    """GOOD with ``text`` appended to file ``name`` as its last line."""
    return {**GOOD, name: GOOD[name] + text + "\n"}


def load_error(tmp_path: Path, files: dict[str, str | bytes]) -> str:
    with pytest.raises(RegistryError) as info:
        Registry.load(write(tmp_path / "registry", files))
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_good_files_load(tmp_path):
    registry = Registry.load(write(tmp_path / "registry", GOOD))
    assert len(registry.batches.key) == 2 and len(registry.dealers.dealer_id) == 3
    assert registry.dealers.name[1] == 'Shanghai "East"'
    assert len(registry.shipments.start) == 2 and len(registry.stores.index) == 1


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    files = {name: BOM + text.replace("\n", "\r\n") for name, text in GOOD.items()}
    registry = Registry.load(write(tmp_path / "registry", files))
    assert len(registry.batches.key) == 2 and list(registry.dealers.tenant) == [7, 7, 8]
    assert registry.rows["batches.csv"][0]["tenant"] == "7"  # the BOM is not part of the first column's name


def test_quoted_line_break_is_one_row_and_later_lines_keep_their_numbers(tmp_path):
    files = {**GOOD, "dealers.csv": GOOD["dealers.csv"] + 'D-BJ,7,"Beijing\nDistribution",KA,11,x,\n'
                                                           "D-XX,7,Bad,KA,4x,y,\n"}
    message = load_error(tmp_path, files)
    assert "dealers.csv:7: column regions: '4x'" in message, message  # the record on lines 5-6 counts twice


# --------------------------------------------------------------------------- numbers

NUMBER_CASES = [
    # (file, line number, the line, column named)
    ("batches.csv", 2, "4\u00b2,42,unit,BEER-500,Lager,1,1000", "tenant"),  # 4²: isdigit() says yes
    ("batches.csv", 3, "7,\uff14\uff12,unit,BEER-500,Lager,1,1000", "batch"),  # full-width ４２: int() takes it
    ("shipments.csv", 2, "7,42,unit,\u0660,999,D-GD,2026-11-01", "serial_from"),  # Arabic-Indic ٠
    ("shipments.csv", 3, "7,42,unit,1000,\u06f1\u06f9\u06f9\u06f9,D-SH,2026-11-01", "serial_to"),  # Persian ۱۹۹۹
    ("dealers.csv", 2, "D-GD,\u0667,Guangdong,KA,44,wang.li,", "tenant"),  # Arabic-Indic ٧
    ("batches.csv", 2, "-7,42,unit,BEER-500,Lager,1,1000", "tenant"),
    ("batches.csv", 2, "7,42,unit,BEER-500,Lager,1,1_000", "size"),  # int() takes underscores
    ("batches.csv", 2, "7,0x2a,unit,BEER-500,Lager,1,1000", "batch"),
    ("stores.csv", 2, "S-GZ-1,,D-GD,440106,KA", "tenant"),
]


@pytest.mark.parametrize("file,line,text,column", NUMBER_CASES)
def test_number_not_in_ascii_digits(tmp_path, file, line, text, column):
    message = load_error(tmp_path, with_line(file, line, text))
    assert f"{file}:{line}: column {column}: " in message, message
    assert "is not a whole number in ASCII digits" in message, message


RANGE_CASES = [
    ("batches.csv", 2, "65536,42,unit,BEER-500,Lager,1,1000", "tenant", "0..65535"),  # 16 bits
    ("dealers.csv", 3, "D-SH,70000,Shanghai,traditional,31,li.na,", "tenant", "0..65535"),
    ("batches.csv", 3, "7,16777216,unit,BEER-500,Lager,1,1000", "batch", "0..16777215"),  # 24 bits
    ("shipments.csv", 2, "7,42,unit,0,4294967296,D-GD,2026-11-01", "serial_to", "0..4294967295"),  # 32 bits
    ("shipments.csv", 3, "7,42,unit,18446744073709551616,0,D-SH,2026-11-01", "serial_from",
     "0..4294967295"),  # 2**64: beyond 64 bits
    ("batches.csv", 2, "7," + "9" * 5000 + ",unit,BEER-500,Lager,1,1000", "batch", "0..16777215"),  # > int()'s digits
]


@pytest.mark.parametrize("file,line,text,column,span", RANGE_CASES)
def test_number_out_of_range(tmp_path, file, line, text, column, span):
    message = load_error(tmp_path, with_line(file, line, text))
    assert f"{file}:{line}: column {column}: " in message and f"out of range {span}" in message, message


def test_leading_zeros_within_range_are_fine(tmp_path):
    files = with_line("batches.csv", 2, "0000000000000000000007,00042,unit,BEER-500,Lager,1,1000")
    assert len(Registry.load(write(tmp_path / "registry", files)).batches.key) == 2


def test_serial_from_above_serial_to(tmp_path):
    message = load_error(tmp_path, with_line("shipments.csv", 3, "7,42,unit,1999,1000,D-SH,2026-11-01"))
    assert "shipments.csv:3: column serial_to: 1000 is below serial_from 1999" in message, message


@pytest.mark.parametrize("file,text", [
    ("dealers.csv", "D-BJ,7,Beijing,KA,\u0661\u0661,x,"),  # ١١: str.isdigit() says yes
    ("stores.csv", "S-GZ-2,7,D-GD,\uff14\uff14\uff10\uff11\uff10\uff16,KA"),  # full-width ４４０１０６
])
def test_adcode_in_non_ascii_digits(tmp_path, file, text):
    message = load_error(tmp_path, with_row(file, text))
    line = GOOD[file].count("\n") + 1
    column = "regions" if file == "dealers.csv" else "region"
    assert f"{file}:{line}: column {column}: " in message and "adcode" in message, message


# --------------------------------------------------------------------------- CSV structure


@pytest.mark.parametrize("size", [MAX_FIELD + 1, 200 * 1024])  # below and above the csv module's own limit
def test_huge_field(tmp_path, size):
    files = with_line("dealers.csv", 3, f"D-SH,7,{'x' * size},traditional,31,li.na,")
    message = load_error(tmp_path, files)
    assert f"dealers.csv:3: column name: field longer than {MAX_FIELD} characters" in message, message


def test_huge_field_in_header(tmp_path):
    message = load_error(tmp_path, with_line("stores.csv", 1, "store_id,tenant," + "d" * (200 * 1024)))
    assert "stores.csv:1: header field 3: field longer than" in message, message


def test_unterminated_quote_names_its_own_file_and_line(tmp_path):
    # today's failure: the quote swallows the rest of dealers.csv, so D-SH is missing and the
    # error blamed shipments.csv
    message = load_error(tmp_path, with_line("dealers.csv", 3, 'D-SH,7,"Shanghai East,traditional,31,li.na,'))
    assert "dealers.csv:3: column name: quote opened here is never closed" in message, message
    assert "shipments.csv" not in message


def test_unterminated_quote_closed_by_a_quote_on_a_later_line(tmp_path):
    # the quote of line 2 pairs with the first quote of line 3, which csv then finds followed by text
    message = load_error(tmp_path, with_line("dealers.csv", 2, 'D-GD,7,"Guangdong Key Accounts,KA,44,wang.li,'))
    assert "dealers.csv:2: column name: quote opened here is not closed on its line (it runs on to line 3)" \
        in message, message


def test_unterminated_quote_after_a_multiline_field(tmp_path):
    text = GOOD["dealers.csv"] + 'D-BJ,7,"Beijing\nDistribution",KA,11,x,"https://hook\nD-CD,7,Chengdu,KA,51,y,\n'
    message = load_error(tmp_path, {**GOOD, "dealers.csv": text})
    assert "dealers.csv:6: column webhook: quote opened here is never closed" in message, message


def test_text_after_closing_quote(tmp_path):
    message = load_error(tmp_path, with_line("stores.csv", 2, 'S-GZ-1,7,"D-GD"x,440106,KA'))
    assert "stores.csv:2: column dealer_id: text after the closing quote" in message, message


def test_duplicate_header_names(tmp_path):
    files = {**GOOD, "batches.csv": "tenant,batch,kind,sku,product,activated,size,batch\n"
                                    "7,42,unit,BEER-500,Lager,1,1000,43\n"}
    message = load_error(tmp_path, files)
    assert "batches.csv:1: header: column 'batch' is named twice (columns 2 and 8)" in message, message


def test_not_utf8_names_the_line(tmp_path):
    files = {**GOOD, "dealers.csv": GOOD["dealers.csv"].encode() + "D-BJ,7,Beijing,KA,11,".encode() + b"\xe9\n"}
    message = load_error(tmp_path, files)
    assert "dealers.csv:5: not UTF-8 text" in message, message


def test_empty_file(tmp_path):
    message = load_error(tmp_path, {**GOOD, "stores.csv": ""})
    assert "stores.csv: empty file" in message and "store_id" in message, message


# --------------------------------------------------------------------------- tenants


def test_shipment_to_a_dealer_of_another_tenant(tmp_path):
    message = load_error(tmp_path, with_row("shipments.csv", "7,42,unit,2000,2999,D-T8,2026-11-01"))
    assert "shipments.csv:4: column dealer_id: dealer 'D-T8' belongs to tenant 8" in message, message
    assert "tenant 7" in message


def test_store_of_a_dealer_of_another_tenant(tmp_path):
    message = load_error(tmp_path, with_row("stores.csv", "S-X,7,D-T8,110101,KA"))
    assert "stores.csv:3: column dealer_id: dealer 'D-T8' belongs to tenant 8" in message, message


# --------------------------------------------------------------------------- the command


def write_config(path: Path, registry: Path, chdb: Path) -> Path:
    """config/local.toml with registry.dir and sink.clickhouse replaced, webhooks off."""
    text = (REPO / "config" / "local.toml").read_text(encoding="utf-8")
    for pattern, repl in [(r'(?m)^dir = "[^"]*"', f'dir = "{registry}"'),
                          (r'(?m)^clickhouse = "chdb:[^"]*"', f'clickhouse = "chdb:{chdb}"'),
                          (r'(?m)^webhooks = true', 'webhooks = false')]:
        text, n = re.subn(pattern, repl, text)
        assert n == 1, pattern
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def scanstream(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return subprocess.run([sys.executable, "-m", "scanstream.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def test_run_on_a_broken_registry_says_so_in_one_line(tmp_path):
    registry = write(tmp_path / "registry",
                     with_line("dealers.csv", 3, 'D-SH,7,"Shanghai East,traditional,31;3201,li.na,'))
    config = write_config(tmp_path / "cfg" / "scanstream.toml", registry, tmp_path / "chdb")  # ../data: in tmp_path
    scans = tmp_path / "scans.jsonl"
    scans.write_text("", encoding="utf-8")
    proc = scanstream("--config", str(config), "run", "--input", str(scans), cwd=REPO)
    assert proc.returncode == 4, proc  # a data error
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("scanstream: registry error: ")
    assert f"{registry / 'dealers.csv'}:3: column name: quote opened here is never closed" in lines[0]
    assert not (tmp_path / "chdb").exists() and not (tmp_path / "data").exists()  # refused before anything is written


# --------------------------------------------------------------------------- codes mint --out


def test_mint_into_a_missing_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(REPO)  # the default config/local.toml
    out = tmp_path / "no-such-folder" / "codes.txt"
    assert main(["codes", "mint", "--tenant", "7", "--batch", "42", "--count", "3", "--out", str(out)]) == 6
    err = capsys.readouterr().err
    assert err.strip() == (f"scanstream: cannot write --out {str(out)!r}: "
                           f"folder {str(out.parent)!r} does not exist"), err
    assert not out.parent.exists()


def test_mint_onto_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(REPO)
    assert main(["codes", "mint", "--tenant", "7", "--batch", "42", "--count", "3", "--out", str(tmp_path)]) == 6
    err = capsys.readouterr().err
    assert err.startswith(f"scanstream: cannot write --out {str(tmp_path)!r}: ") and len(err.splitlines()) == 1, err
