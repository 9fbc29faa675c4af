"""The wheel a user installs: one top-level name, everything it needs inside, and a demo that runs
from an empty folder with nothing of the repository at hand."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 600  # compiles the Cython extensions in an isolated build environment


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    built, = out.glob("scanstream-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A new virtual environment holding the wheel; its dependencies are the test environment's
    (a .pth line after its own site-packages), so only scanstream itself comes from the wheel."""
    env = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    # pip of the test environment installs into the new one (--python); --prefix would also
    # uninstall the test environment's own scanstream
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                           "--no-compile", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    site.joinpath("deps-of-the-test-environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


def test_the_wheel_installs_one_top_level_name_with_its_ddl_templates_extensions_and_page(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"scanstream"}, f"the wheel puts {sorted(top)} into site-packages"
    ddl = {Path(n).name for n in names if n.startswith("scanstream/sinks/ddl/") and n.endswith(".sql")}
    assert ddl == {p.name for p in (ROOT / "config" / "clickhouse").glob("*.sql")}
    assert {"scanstream/config/local.toml", "scanstream/config/production.toml"} <= set(names)
    extensions = {Path(n).name.split(".", 1)[0] for n in names
                  if n.startswith("scanstream/ext/") and n.endswith(".so")}
    assert extensions == {p.stem for p in (ROOT / "ext").glob("*.pyx")}
    static = {Path(n).name for n in names if n.startswith("scanstream/dashboard/static/")}
    assert static == {p.name for p in (ROOT / "scanstream" / "dashboard" / "static").iterdir() if p.is_file()}


def test_init_then_demo_runs_from_an_empty_folder_on_the_installed_wheel(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCANSTREAM_CONFIG")}
    scanstream = [str(installed / "bin" / "python"), "-m", "scanstream.cli"]
    where = subprocess.run([*scanstream[:1], "-c", "import scanstream.engine.pipeline as m; print(m.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed)), f"scanstream was imported from {where}, not from the wheel"

    before = subprocess.run([*scanstream, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert before.returncode == 3 and "scanstream init" in before.stderr, before.stderr  # configuration error

    done = subprocess.run([*scanstream, "init"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([*scanstream, "init"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--force" in again.stderr, "init overwrote an existing configuration"

    demo = subprocess.run([*scanstream, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    query = subprocess.run([*scanstream, "query", "SELECT count() AS n FROM scan_events FINAL"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stderr
    answered = {orjson.loads(line)["scan_id"] for line in (tmp_path / "data" / "demo-results.jsonl").open("rb")}
    assert int(query.stdout.split()[2]) == len(answered) > 0, query.stdout  # "n", "-----", the count, "(1 row)"
