"""config_writer: the worker configurations that tests and benchmarks start workers with."""
from __future__ import annotations

from pathlib import Path

import pytest

from scanstream.engine.config import load
from config_writer import toml_table, worker_toml

LOCAL_TOML = Path(__file__).resolve().parent.parent / "config" / "local.toml"


def test_a_worker_configuration_from_local_toml_loads_with_what_was_given(tmp_path):
    kafka = {"bootstrap": "127.0.0.1:19092", "scans_topic": "s-1", "group": "g \"quoted\"", "partitions": 3,
             "take": 7, "session_timeout_s": 4.5}
    text = worker_toml(LOCAL_TOML.read_text(encoding="utf-8"), registry=tmp_path / "reg dir", chdb=tmp_path / "ch",
                       state="redis", redis={"prefix": "p:", "result_ttl_s": 60}, kafka=kafka)
    path = tmp_path / "w.toml"
    path.write_text(text, encoding="utf-8")
    config = load(path)
    assert config.registry_dir == tmp_path / "reg dir"
    assert config.clickhouse == "chdb:" + str(tmp_path / "ch")
    assert config.state_backend == "redis"
    assert config.alerts.webhooks is False
    assert (config.redis.prefix, config.redis.result_ttl_s) == ("p:", 60)
    k = config.kafka
    assert (k.bootstrap, k.scans_topic, k.group, k.partitions, k.take, k.session_timeout_s) == (
        "127.0.0.1:19092", "s-1", 'g "quoted"', 3, 7, 4.5)


def test_bad_bases_and_values_are_named():
    with pytest.raises(ValueError, match=r"\[kafka\] table"):
        worker_toml('[kafka]\nbootstrap = "x:1"\n', registry=Path("r"), chdb=Path("c"), state="memory",
                    redis={}, kafka={})
    with pytest.raises(ValueError, match="registry dir"):
        worker_toml('[sink]\nclickhouse = "chdb:x"\n', registry=Path("r"), chdb=Path("c"), state="memory",
                    redis={}, kafka={})
    with pytest.raises(TypeError, match=r"\[kafka\] take: expected str, int, float or bool, got list"):
        toml_table("kafka", {"take": [1]})
