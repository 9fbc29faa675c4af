"""The deployment recipe (Dockerfile, config/compose.yaml, config/prometheus/) checked statically.

No Docker daemon, Apache Kafka or ClickHouse server can run where the project is tested, so the
recipe is never started here.  What can be checked is that it is wired to the project as it is:
every file it mounts or copies exists, the worker's command is one the CLI accepts, every host,
port, credential and variable the production configuration needs is what a service of the
compose file offers, Grafana's data sources and dashboards meet, and Prometheus scrapes the
port the worker serves and alerts on metrics the worker exports.
"""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest
import yaml

from scanstream.cli import build_parser
from scanstream.engine import config as config_mod
from scanstream.streams.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
COMPOSE = yaml.safe_load((CONFIG / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def aliases(service: str) -> set[str]:
    nets = SERVICES[service].get("networks", {})
    names = {service}
    for net in nets.values() if isinstance(nets, dict) else ():
        names |= set((net or {}).get("aliases", ()))
    return names


def service_named(host: str) -> str:
    found = [s for s in SERVICES if host in aliases(s)]
    assert len(found) == 1, f"host {host!r} of the configuration is served by {found or 'no service'}"
    return found[0]


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path (relative to the compose file) of each bind mount."""
    out = {}
    for volume in SERVICES[service].get("volumes", ()):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (CONFIG / source).resolve()
    return out


def env_refs(text: str) -> set[str]:
    """Names of the ${VAR} references in a provisioning file (its comments left out)."""
    return set(re.findall(r"\$\{(\w+)", re.sub(r"(?m)^\s*#.*$", "", text)))


@pytest.fixture
def production(monkeypatch) -> config_mod.Config:
    """config/production.toml as the worker container reads it: with the variables compose sets."""
    worker_env = SERVICES["worker"]["environment"]
    for name in worker_env:
        monkeypatch.setenv(name, "000102030405060708090a0b0c0d0e0f")
    mounted = mounts("worker")
    target = next(t for t in mounted if t.endswith(".toml"))
    return config_mod.load(mounted[target])


def test_every_file_the_recipe_mounts_or_copies_exists():
    for service in SERVICES:
        for target, source in mounts(service).items():
            assert source.exists(), f"{service}: {source} (mounted at {target}) does not exist"
    build = SERVICES["worker"]["build"]
    assert (CONFIG / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile: COPY {source}: not in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"engine", "ext", "streams", "sinks", "scanstream", "config"} & set(ignored)


def test_the_worker_command_is_one_the_cli_accepts_and_reads_the_mounted_configuration():
    parser = build_parser()
    compose_args = parser.parse_args(SERVICES["worker"]["command"])
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1)
    image_args = parser.parse_args(yaml.safe_load(cmd))
    for args in (compose_args, image_args):
        assert args.command == "worker" and args.metrics_host == "0.0.0.0"
        assert args.config in mounts("worker") or args.config in DOCKERFILE
    copied = re.search(r"^COPY config/(\S+) (\S+)$", DOCKERFILE, re.M)
    assert copied.group(2) == image_args.config and (CONFIG / copied.group(1)).exists()
    assert str(compose_args.metrics_port) in {p.split(":")[1] for p in SERVICES["worker"]["ports"]}


def test_every_service_the_production_configuration_names_is_in_the_recipe(production):
    redis = urllib.parse.urlsplit(production.redis.url)
    assert service_named(redis.hostname) == "redis" and (redis.port or 6379) == 6379

    clickhouse = urllib.parse.urlsplit(production.clickhouse)
    env = SERVICES[service_named(clickhouse.hostname)]["environment"]
    assert clickhouse.port == 8123  # the server's HTTP port
    assert (clickhouse.username, clickhouse.password) == (env["CLICKHOUSE_USER"], env["CLICKHOUSE_PASSWORD"])
    assert production.database == env["CLICKHOUSE_DB"]

    kafka_env = SERVICES["kafka"]["environment"]
    listener_ports = set(re.findall(r"PLAINTEXT://[^:,]*:(\d+)", kafka_env["KAFKA_LISTENERS"]))
    for host_port in production.kafka.bootstrap.split(","):
        host, _, port = host_port.rpartition(":")
        assert service_named(host) == "kafka" and port in listener_ports, host_port
    advertised = re.search(r"PLAINTEXT://([^:,]+):", kafka_env["KAFKA_ADVERTISED_LISTENERS"]).group(1)
    assert service_named(advertised) == "kafka"
    assert int(kafka_env["KAFKA_NUM_PARTITIONS"]) == production.kafka.partitions


def test_the_worker_gets_every_variable_the_production_configuration_reads():
    text = (CONFIG / "production.toml").read_text()
    wanted = set(re.findall(r'\b(?:env|seed_env|secret_env)\s*=\s*"(\w+)"', text))
    given = set(SERVICES["worker"]["environment"])
    assert wanted and wanted <= given, f"production.toml reads {sorted(wanted - given)}, not set for the worker"
    example = (CONFIG / "compose.env.example").read_text()
    assert wanted <= set(re.findall(r"^(\w+)=", example, re.M))


def test_grafana_gets_its_provisioning_its_dashboards_and_every_variable_they_read():
    grafana = SERVICES["grafana"]
    mounted = mounts("grafana")
    provisioning = mounted["/etc/grafana/provisioning"]
    assert provisioning == CONFIG / "grafana" / "provisioning"
    refs = set()
    for f in provisioning.rglob("*.yaml"):
        refs |= env_refs(f.read_text())
    assert refs and refs <= set(grafana["environment"]), sorted(refs - set(grafana["environment"]))
    provider = yaml.safe_load((provisioning / "dashboards" / "scanstream.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounted[path] == CONFIG / "grafana" / "dashboards"
    uids = {d["uid"] for f in (provisioning / "datasources").glob("*.yaml")
            for d in yaml.safe_load(f.read_text())["datasources"]}
    used = set()
    for board in mounted[path].glob("*.json"):  # the data sources a panel or variable names
        used |= {m.group(1) for m in re.finditer(r'"datasource":\s*\{[^}]*"uid":\s*"([^"$]+)"', board.read_text())}
    assert used and used <= uids, f"dashboards name data sources {sorted(used - uids)} that are not provisioned"
    env = grafana["environment"]
    assert service_named(env["SCANSTREAM_CLICKHOUSE_HOST"]) == "clickhouse"
    assert urllib.parse.urlsplit(env["SCANSTREAM_PROMETHEUS_URL"]).hostname == "prometheus"
    assert "grafana-clickhouse-datasource" in env["GF_INSTALL_PLUGINS"]


def test_prometheus_scrapes_the_worker_and_alerts_on_metrics_it_exports():
    mounted = mounts("prometheus")
    scrape = yaml.safe_load(mounted["/etc/prometheus/prometheus.yml"].read_text())
    assert set(scrape["rule_files"]) <= set(mounted)
    targets = [t for job in scrape["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    worker_args = build_parser().parse_args(SERVICES["worker"]["command"])
    assert targets == [f"worker:{worker_args.metrics_port}"]
    # a labelled metric has no samples before its first use, so its sample names come from its type
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {family.name + suffix for family in WorkerMetrics().registry.collect()
                for suffix in suffixes[family.type]}
    rules = yaml.safe_load(mounted["/etc/prometheus/alerts.yml"].read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in set(re.findall(r"\b(scanstream_\w+)", rule["expr"])):
                assert name in exported, f"alert {rule['alert']}: the worker exports no metric {name}"
