"""``scanstream state migrate``, end to end.

An upgrade over state of an older key layout must stop with one line that says what to run,
and the migration must leave the state answering as before (``tests/test_state_stores.py``
checks the answers key family by key family; here the commands an operator types).
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from config_writer import worker_toml
from scanstream.cli import exits, main
from scanstream.engine.config import load
from scanstream.engine.state.redis import RedisStateStore
from scanstream.streams.synthetic import build_world
from test_state_stores import CODE, OK, REPEAT, claim, write_layout_1

LOCAL_TOML = Path(__file__).resolve().parent.parent / "config" / "local.toml"


def config_file(tmp_path: Path, redis: dict) -> Path:
    """config/local.toml on the Redis state store with ``redis``, and the demo world's registry."""
    config = load(LOCAL_TOML)
    build_world(7, config.keys.get(7, 1), 1).write_registry(tmp_path / "registry")
    path = tmp_path / "scanstream.toml"
    path.write_text(worker_toml(LOCAL_TOML.read_text(encoding="utf-8"), registry=tmp_path / "registry",
                                chdb=tmp_path / "chdb",
                                state="redis", redis=redis, kafka={"bootstrap": "127.0.0.1:1"}), encoding="utf-8")
    return path


@pytest.fixture
def old_prefix(redis_url):
    """A prefix holding state of layout 1; deleted afterwards."""
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = f"scanstream-test:{uuid.uuid4().hex[:12]}:"
    write_layout_1(client, prefix.encode(), 24 * 3600)  # config/local.toml keeps answers 24 hours
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_a_command_on_state_of_layout_1_stops_with_one_line_until_state_migrate(redis_url, old_prefix, tmp_path,
                                                                                  capsys):
    config = config_file(tmp_path, {"url": redis_url, "prefix": old_prefix})
    run = ["--config", str(config), "run", "--input", str(tmp_path / "none.jsonl"), "--results", str(tmp_path / "r.jsonl")]
    (tmp_path / "none.jsonl").write_text("")
    assert main(run) == exits.DATA
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "layout 1" in err and "scanstream state migrate" in err
    assert main(["--config", str(config), "state", "migrate"]) == exits.OK
    out = capsys.readouterr().out
    assert "layout 3" in out and "1 dd" in out and "1 rp" in out
    store = RedisStateStore.from_url(redis_url, prefix=old_prefix, replay_ttl_s=24 * 3600)
    assert claim(store, [("old-1", CODE, 5, OK), ("new-1", CODE, 5, OK)]) == [(OK, True), (REPEAT, False)]
    store.close()


def test_state_migrate_needs_the_redis_store(tmp_path, capsys):
    config = config_file(tmp_path, {"prefix": "x:"}).read_text().replace('backend = "redis"', 'backend = "memory"')
    (tmp_path / "m.toml").write_text(config)
    assert main(["--config", str(tmp_path / "m.toml"), "state", "migrate"]) == exits.CONFIG
    assert "only the Redis state store" in capsys.readouterr().err
