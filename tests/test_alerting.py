"""Alerts from a real pipeline run reach dealers' webhooks as one digest per dealer and window."""
from __future__ import annotations

import csv
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import numpy as np
import pytest

from scanstream.engine.config import load
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.wiring import build_alerting, build_pipeline, build_registry
from scanstream.streams.checkpoint import Checkpoint
from scanstream.streams.synthetic import build_world, generate_scans

LOCAL_TOML = Path(__file__).resolve().parents[1] / "config" / "local.toml"


@pytest.fixture
def receiver(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            bodies.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def test_one_digest_per_dealer_and_window(tmp_path, receiver, monkeypatch):
    url, bodies = receiver
    config = load(LOCAL_TOML)
    world = build_world(7, config.keys.get(7, 1), 1)
    world.write_registry(tmp_path / "registry")
    # every dealer gets a webhook on the local receiver; D-GD-KA's is signed with a secret
    dealers = list(csv.DictReader((tmp_path / "registry" / "dealers.csv").open()))
    for d in dealers:
        d["webhook"] = f"{url}/{d['dealer_id']}"
        d["secret_env"] = "TEST_GDKA_SECRET" if d["dealer_id"] == "D-GD-KA" else ""
    with (tmp_path / "registry" / "dealers.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dealers[0]))
        w.writeheader()
        w.writerows(dealers)
    monkeypatch.setenv("TEST_GDKA_SECRET", "s3cret")
    config = replace(config, registry_dir=tmp_path / "registry", clickhouse="")
    registry = build_registry(config)
    assert registry.dealers.secret_env.tolist().count("TEST_GDKA_SECRET") == 1
    pipeline = build_pipeline(config, registry, MemoryStateStore())
    alerting = build_alerting(config, registry)
    checkpoint = Checkpoint(pipeline, outbox=alerting)
    lines = generate_scans(world, 20_000, seed=5)
    fired = []
    for i in range(0, len(lines), 2000):
        result = checkpoint.run(f"b{i}", lines[i:i + 2000], np.arange(i, i + 2000).astype(str).astype(object)).result
        fired.extend(zip(result.alerts["alert_id"].tolist(), result.alerts["dealer_id"].tolist(),
                         result.alerts["window_start"].tolist()))
    alerting.close()
    assert fired, "the synthetic stream raises alerts"
    expected_messages = {(d, w) for _, d, w in fired if d}
    assert len(bodies) == len(expected_messages)  # one message per dealer and window
    carried = [item["alert_id"] for body in bodies for item in body["items"]]
    assert sorted(carried) == sorted(a for a, d, _ in fired if d)  # every alert exactly once
    for body in bodies:
        assert len({(i["dealer_id"], i["window_start"]) for i in body["items"]}) == 1
