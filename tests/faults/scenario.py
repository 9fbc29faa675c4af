"""``Scenario``: one isolated deployment of ``scanstream worker`` on the shared broker and Redis.

Unique topic names, consumer group and Redis prefix; a generated configuration (Redis state,
chdb in a temporary folder, ``partitions = 4``, ``session_timeout_s = 4``, a small ``take`` so
that batches are many); the tenants' keys and the campaigns' seeds given as the specs say
(hex, environment, key file); a registry for one or more tenants; the producer of its scans
topic, the watchers of its output topics, its workers; ``close`` stops them all and deletes
its Redis keys.

Separate because it is the one place that ties the other modules together into a deployment:
the scenarios (``harness``), the promise checks (``checks``) and the hostile tests use it.
"""
from __future__ import annotations

import collections
import json
import os
import time
import uuid
from pathlib import Path

import orjson

from .inputs import CampaignSpec, TenantSpec, secret_needles, write_registry
from .processes import Worker
from .topics import Message, ResultsIndex, ScanProducer, TopicWatcher

#: Every artifact (worker log, topic) a scenario produced in this process, for the secrets test.
ARTIFACTS: list[Scenario] = []


class Scenario:
    """One isolated deployment on the shared broker and Redis (see the module docstring)."""

    def __init__(self, root: Path, bootstrap: str, redis_url: str, *, label: str, tenants: list[TenantSpec],
                 campaigns: list[CampaignSpec], partitions: int = 4, take: int = 4, within_ms: int = 50,
                 per_envelope: int = 50, session_timeout_s: float = 4, cluster: bool = False,
                 redis_settings: dict | None = None):
        from scanstream.streams.synthetic import build_world

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.cluster = cluster  # redis_url is a node of a Redis Cluster
        self.redis_settings = dict(redis_settings or {})  # more of the workers' [redis] table
        self.label = label
        self.started = time.time()  # no reply of this scenario is older (``checks``)
        self.tenants = tenants
        self.campaigns = campaigns
        self.partitions = partitions
        self.take = take
        self.within_ms = within_ms
        self.session_timeout_s = session_timeout_s
        tag = uuid.uuid4().hex[:8]
        self.topics = {k: f"faults-{label}-{k}-{tag}" for k in ("scans", "results", "awards", "alerts", "dlq")}
        self.group = f"faults-{label}-{tag}"
        self.prefix = f"scanstream-faults:{label}:{tag}:"
        self._env: dict[str, str] = {}
        self.needles = secret_needles(tenants, campaigns)
        self.worlds = [build_world(t.id, t.key, t.key_id) for t in tenants]
        self.registry = self.root / "registry"
        write_registry(self.registry, self.worlds)
        self.workers: list[Worker] = []
        self.watchers: dict[str, TopicWatcher] = {}
        self.results = ResultsIndex()
        self.awards_seen: dict[str, list[dict]] = collections.defaultdict(list)
        self._create_topics()
        self.producer = ScanProducer(bootstrap, self.topics["scans"], partitions, per_envelope)
        ARTIFACTS.append(self)

    # -- configuration ---------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
        env.update(self._env)
        return env

    def _key_toml(self, t: TenantSpec) -> str:
        if t.via == "hex":
            return f'{{ key_id = {t.key_id}, hex = "{t.key.hex()}" }}'
        if t.via == "env":
            var = f"FAULTS_KEY_{t.id}_{t.key_id}"
            self._env[var] = t.key.hex().upper()  # upper case: the grep must find any case
            return f'{{ key_id = {t.key_id}, env = "{var}" }}'
        path = self.root / f"key-{t.id}-{t.key_id}.hex"
        path.write_text(t.key.hex() + "\n", encoding="ascii")
        return f"{{ key_id = {t.key_id}, file = {json.dumps(str(path))} }}"

    def _campaign_toml(self, c: CampaignSpec) -> str:
        if c.via == "env":
            var = "FAULTS_SEED_" + "".join(ch if ch.isalnum() else "_" for ch in c.id).upper()
            self._env[var] = c.seed
            seed = f"seed_env = {json.dumps(var)}"
        else:
            seed = f"seed = {json.dumps(c.seed)}"
        tiers = ",\n".join(f'  {{ name = "{n}", cents = {cents}, probability = {p}, stock = {s} }}'
                           for n, cents, p, s in c.tiers)
        return f"""
[[campaigns]]
id = {json.dumps(c.id)}
tenant = {c.tenant}
skus = {json.dumps(list(c.skus))}
start = 2026-11-01T00:00:00+08:00
end = 2027-01-01T00:00:00+08:00
budget_cents = {c.budget_cents}
daily_cap = {c.daily_cap}
guide_cents = {c.guide_cents}
utc_offset_minutes = {c.utc_offset_minutes}
{seed}
tiers = [
{tiers}
]
"""

    def write_config(self, path: Path, chdb: Path, redis_url: str | None = None) -> Path:
        from config_writer import toml_table
        tenants = "".join(f"""
[[tenants]]
id = {t.id}
name = {json.dumps(t.name or f"tenant {t.id}")}
keys = [{self._key_toml(t)}]
""" for t in self.tenants)
        k = self.topics
        text = f"""# generated by tests/faults/scenario.py for scenario {self.label}
{tenants}
[engine]
replay_ttl_hours = 24

[registry]
dir = {json.dumps(str(self.registry))}
reload_seconds = 3600

[state]
backend = "redis"

[sink]
clickhouse = {json.dumps("chdb:" + str(chdb))}

[alerts]
webhooks = false
allow_loopback = true

""" + toml_table("redis", {"url": redis_url or self.redis_url, "prefix": self.prefix, "result_ttl_s": 7200,
                                 "cluster": self.cluster, **self.redis_settings}) + "\n" + \
            toml_table("kafka", {"bootstrap": self.bootstrap, **{f"{n}_topic": k[n] for n in
                                                                  ("scans", "results", "awards", "alerts", "dlq")},
                                 "group": self.group, "partitions": self.partitions, "take": self.take,
                                 "within_ms": self.within_ms, "session_timeout_s": self.session_timeout_s}) + """
""" + "".join(self._campaign_toml(c) for c in self.campaigns)
        path.write_text(text, encoding="utf-8")
        return path

    def _create_topics(self) -> None:
        from scanstream.engine.config import KafkaSettings
        from scanstream.streams.topics import ensure_topics

        ensure_topics(KafkaSettings(bootstrap=self.bootstrap, scans_topic=self.topics["scans"],
                                    results_topic=self.topics["results"], awards_topic=self.topics["awards"],
                                    alerts_topic=self.topics["alerts"], dlq_topic=self.topics["dlq"],
                                    partitions=self.partitions))

    # -- processes and watchers ------------------------------------------------------------

    def worker(self, label: str) -> Worker:
        w = Worker(self, label)
        self.workers.append(w)
        return w

    def watch(self) -> None:
        """Start consuming the results, awards and dead-letter topics."""
        def on_award(msg: Message) -> None:
            # indexed by the code; the message key is the award's payout key (checked in checks.py)
            award = orjson.loads(msg.value)
            award["message_key"] = (msg.key or b"").decode()
            self.awards_seen[f"{award['tenant']}:{award['kind']}:{award['batch']}:{award['serial']}"].append(award)

        self.watchers = {
            "results": TopicWatcher(self.bootstrap, self.topics["results"], self.partitions, handle=self.results,
                                    needles=self.needles),
            "awards": TopicWatcher(self.bootstrap, self.topics["awards"], self.partitions, handle=on_award,
                                   needles=self.needles),
            "dlq": TopicWatcher(self.bootstrap, self.topics["dlq"], self.partitions, keep=True, needles=self.needles),
            "alerts": TopicWatcher(self.bootstrap, self.topics["alerts"], self.partitions, needles=self.needles),
        }
        for w in self.watchers.values():
            w.start()

    def answered(self) -> int:
        with self.watchers["results"].lock:
            return len(self.results.count)

    def wait_done(self, names: set[str], timeout_s: float, workers: list[Worker] | None = None) -> None:
        """Until every name has a row on the results topic; raises on timeout or a dead worker."""
        deadline = time.monotonic() + timeout_s
        workers = self.workers if workers is None else workers
        while True:
            with self.watchers["results"].lock:
                missing = [n for n in names if n not in self.results.count] if len(self.results.count) >= len(names) \
                    else None
            if missing == []:
                return
            for w in workers:
                if w.proc is not None and not w.alive():
                    raise RuntimeError(f"worker {w.label} exited ({w.proc.returncode}):\n{w.log_tail()}")
            err = self.watchers["results"].error
            if err is not None:
                raise RuntimeError(f"results watcher failed: {err!r}")
            if time.monotonic() > deadline:
                have = self.answered()
                raise TimeoutError(f"{len(names) - have if missing is None else len(missing)} of {len(names)} "
                                   f"scans have no result after {timeout_s:.0f} s")
            time.sleep(0.5)

    def redis_client(self, url: str | None = None):
        import redis
        if self.cluster:
            return redis.RedisCluster.from_url(url or self.redis_url, socket_timeout=30)
        return redis.Redis.from_url(url or self.redis_url, socket_timeout=30)

    def close(self) -> None:
        for w in self.workers:
            if w.alive():
                w.stop()
        for watcher in self.watchers.values():
            if watcher.is_alive():
                watcher.stop()
        try:
            self.producer.close()
        except Exception:
            pass
        try:
            client = self.redis_client()
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i:i + 5000])
            client.close()
        except Exception:
            pass
