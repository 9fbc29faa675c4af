"""``scanstream query`` reads only (issue 12 part 6): no DDL, no INSERT, no new folder or database.

A ``scanstream run`` over a small stream creates a chdb database; queries then must give the
right answers and leave the data folder exactly as it was (every file and folder below it, with
its size and mtime).  The tests run as root, for whom ``chmod a-w`` stops nothing, so the
comparison is the check; the folder is made read-only all the same.  Its top level stays
writable: chdb keeps its lock file ``status`` there while open (created and removed again, so
the top folder's own mtime is not compared), and refuses to open a folder where it cannot.

Real processes only: chdb lets one process open one data path.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scanstream.engine.codec import encode
from scanstream.engine.config import CONFIG_ENV

pytest.importorskip("chdb")

REPO = Path(__file__).resolve().parents[1]
KEY0 = bytes(range(16))  # DESIGN.md's public test key of tenant 7, key_id 0
T_RFC = "2026-11-20T10:00:00+08:00"

REGISTRY = {
    "batches.csv": "tenant,batch,kind,sku,product,activated,size\n7,42,unit,BEER-500,Lager 500 ml,1,1000\n",
    "dealers.csv": "dealer_id,tenant,name,channel,regions,manager,webhook\nD-GD,7,Guangdong,KA,44,wang.li,\n",
    "shipments.csv": "tenant,batch,kind,serial_from,serial_to,dealer_id,shipped_at\n7,42,unit,0,999,D-GD,2026-11-01\n",
    "stores.csv": "store_id,tenant,dealer_id,region,channel\n",
}


def scanstream(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return subprocess.run([sys.executable, "-m", "scanstream.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def write_config(path: Path, registry: Path, chdb: Path, database: str = "scanstream") -> Path:
    """config/local.toml with registry.dir, sink.clickhouse and sink.database replaced, webhooks off."""
    text = (REPO / "config" / "local.toml").read_text(encoding="utf-8")
    for pattern, repl in [(r'(?m)^dir = "[^"]*"', f'dir = "{registry}"'),
                          (r'(?m)^clickhouse = "chdb:[^"]*"', f'clickhouse = "chdb:{chdb}"'),
                          (r'(?m)^database = "[^"]*"', f'database = "{database}"'),
                          (r'(?m)^webhooks = true', 'webhooks = false')]:
        text, n = re.subn(pattern, repl, text)
        assert n == 1, pattern
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file, folder and link below ``folder``: (kind, size, mtime in ns)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            st = path.lstat()
            out[str(path.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def rows(out: str) -> list[list[str]]:
    """The cells of a ``scanstream query`` table (cells are single words here)."""
    lines = out.rstrip("\n").splitlines()
    assert re.fullmatch(r"\(\d+ rows?\)", lines[-1]), out
    return [line.split() for line in lines[2:-1]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry, a config and a chdb database written by ``scanstream run``; its results."""
    home = tmp_path_factory.mktemp("query-readonly")
    registry = home / "registry"
    registry.mkdir()
    for name, text in REGISTRY.items():
        (registry / name).write_text(text, encoding="utf-8")
    chdb = home / "chdb"
    # in a folder of its own: the config's other relative paths (../data/...) stay inside ``home``
    config = write_config(home / "cfg" / "scanstream.toml", registry, chdb)
    codes = [encode(KEY0, 7, 42, serial) for serial in range(5)]
    scans = [{"scan_id": f"s-{i}", "ts": T_RFC, "code": c, "user_id": f"u-{i}", "region": "440106"}
             for i, c in enumerate(codes)]
    scans.append({"scan_id": "s-again", "ts": T_RFC, "code": codes[0], "user_id": "u-9", "region": "440106"})
    scans.append({"scan_id": "s-bad", "ts": T_RFC, "code": "HELLO", "user_id": "u-9"})
    stream = home / "scans.jsonl"
    stream.write_text("".join(json.dumps(s) + "\n" for s in scans), encoding="utf-8")
    results = home / "results.jsonl"
    ok(scanstream("--config", str(config), "run", "--input", str(stream), "--results", str(results), cwd=home))
    assert (chdb / "metadata").is_dir()
    # read-only below the top level (see the module docstring); writable again afterwards, for cleanup
    below = [Path(root) / name for root, dirs, files in os.walk(chdb) for name in dirs + files]
    modes = {p: p.lstat().st_mode for p in below if not p.is_symlink()}
    for p, mode in modes.items():
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield {"home": home, "config": config, "chdb": chdb, "registry": registry,
           "results": [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]}
    for p, mode in modes.items():
        p.chmod(mode)


def test_query_answers_and_changes_nothing(world):
    before = snapshot(world["chdb"])
    proc = ok(scanstream("--config", str(world["config"]), "query",
                         "SELECT verdict, count() FROM scan_events FINAL GROUP BY verdict ORDER BY verdict",
                         cwd=world["home"]))
    expected: dict[str, int] = {}
    for r in world["results"]:
        expected[r["verdict"]] = expected.get(r["verdict"], 0) + 1
    assert {v: int(n) for v, n in rows(proc.stdout)} == expected == {"ok": 5, "repeat": 1, "malformed": 1}
    # a view over the registry and campaign tables the run wrote
    proc = ok(scanstream("--config", str(world["config"]), "query",
                         "SELECT id, budget_cents FROM campaigns FINAL ORDER BY id", cwd=world["home"]))
    # the campaigns of config/local.toml: the consumers' red packets and the 开箱有礼 one for stores
    assert rows(proc.stdout) == [["open-case-2026", "500000"], ["winter-2026", "10000000"]]
    assert snapshot(world["chdb"]) == before


@pytest.mark.parametrize("sql", [
    "DROP TABLE scan_events",
    "INSERT INTO registry_stores (store_id, tenant) VALUES ('S-X', 7)",
    "CREATE TABLE scratch (a UInt8) ENGINE = MergeTree ORDER BY a",
])
def test_query_refuses_to_write(world, sql):
    before = snapshot(world["chdb"])
    proc = scanstream("--config", str(world["config"]), "query", sql, cwd=world["home"])
    assert proc.returncode == 4, proc  # refused by the read-only session: a data error, not an outage
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "readonly" in proc.stderr.lower(), proc.stderr
    assert snapshot(world["chdb"]) == before
    (count,), = rows(ok(scanstream("--config", str(world["config"]), "query",
                                   "SELECT count() FROM scan_events", cwd=world["home"])).stdout)
    assert int(count) == len(world["results"])


def test_query_before_any_run_says_so(world, tmp_path):
    chdb = tmp_path / "chdb"
    config = write_config(tmp_path / "cfg" / "scanstream.toml", world["registry"], chdb)
    proc = scanstream("--config", str(config), "query", "SELECT 1", cwd=tmp_path)
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no database 'scanstream'" in lines[0] and str(chdb) in lines[0], proc.stderr
    assert not chdb.exists()  # not created, not even the folder


def test_query_of_a_database_the_folder_lacks(world, tmp_path):
    before = snapshot(world["chdb"])
    config = write_config(tmp_path / "cfg" / "scanstream.toml", world["registry"], world["chdb"], database="elsewhere")
    proc = scanstream("--config", str(config), "query", "SELECT 1", cwd=tmp_path)
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no database 'elsewhere'" in lines[0], proc.stderr
    assert snapshot(world["chdb"]) == before
