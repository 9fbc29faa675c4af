"""The inputs of a fault run: tenants, campaigns, the registry and the scan streams built from them.

``TenantSpec`` and ``CampaignSpec`` describe what a scenario configures: keys and seeds, and how
each reaches the configuration (as hex, through the environment, in a key file), so that the
secrets test has something to look for; ``stocked_campaign`` makes a campaign whose stock and
budget run out mid-stream; ``secret_needles`` and ``find_secrets`` are what the secrets promise
searches for, derived from the same specs.  ``write_registry``, ``make_stream`` and
``inprocess_config`` turn the specs into the registry's CSV files, a synthetic stream
(``streams.synthetic``) and a ``Config`` for a ``BatchHandler`` in this process.

Separate from the services modules because none of it starts or needs a service: the
in-process tests (``test_outage``, ``test_fuzz``) use it without a broker or a worker.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from .processes import REPO

DEMO_DAY_START_MS = 1795132800000  # streams.synthetic.DEMO_START_MS (2026-11-20T08:00+08:00)
MS_PER_DAY = 86_400_000


# --------------------------------------------------------------------------- tenants, campaigns, secrets


@dataclass
class TenantSpec:
    """A tenant and how its key reaches the configuration: ``hex``, ``env`` or ``file``."""

    id: int
    key: bytes
    key_id: int = 1
    via: str = "hex"
    name: str = ""


@dataclass
class CampaignSpec:
    id: str
    tenant: int
    seed: str
    budget_cents: int
    daily_cap: int
    tiers: list[tuple[str, int, float, int]]  # name, cents, probability, stock
    utc_offset_minutes: int = -180  # the synthetic day (00:00-14:00 UTC) crosses midnight at 03:00 UTC
    via: str = "env"  # seed given as ``seed`` or through ``seed_env``
    skus: tuple[str, ...] = ("BEER-500", "BEER-330", "CRAFT-IPA")
    guide_cents: int = 0  # 超级导购码: a guide's commission per prize on a unit they sold

    def model(self):
        """The engine's Campaign (for draws and limits)."""
        from scanstream.engine.lottery import Campaign, Tier
        return Campaign(id=self.id, tenant=self.tenant, start_ms=1793462400000, end_ms=1798732800000,
                        budget_cents=self.budget_cents, daily_cap=self.daily_cap,
                        tiers=tuple(Tier(n, c, p, s) for n, c, p, s in self.tiers), seed=self.seed,
                        skus=self.skus, utc_offset_minutes=self.utc_offset_minutes, guide_cents=self.guide_cents)

    def day(self, ts_ms: int) -> int:
        return (ts_ms + self.utc_offset_minutes * 60_000) // MS_PER_DAY


#: The commission of the fault suite's campaigns: the streams carry guide sales (``make_stream``), so
#: every fault scenario also pays commissions from the budget it must never exceed.
GUIDE_CENTS = 50


def stocked_campaign(cid: str, tenant: int, scans: int, *, cap: int = 3, via: str = "env",
                     seed: str | None = None) -> CampaignSpec:
    """A campaign whose tiers run out about halfway through a stream of ``scans`` scans and whose
    budget is a little short of paying every stocked prize.  ``seed`` fixes its draws (a random
    seed otherwise): which tier runs out before the budget then depends on the stream alone."""
    eligible = scans * 0.8  # genuine first consumer scans of the synthetic mix
    tiers = []
    # the rare tiers run out first (about a quarter into the stream), the common ones about halfway
    for name, cents, p, share in (("8.8", 880, 0.20, 0.5), ("16.6", 1660, 0.05, 0.5), ("88", 8800, 0.005, 0.3),
                                  ("168", 16800, 0.001, 0.25)):
        tiers.append((name, cents, p, max(1, int(p * eligible * share))))
    budget = int(sum(c * s for _, c, _, s in tiers) * 0.95)
    return CampaignSpec(cid, tenant, seed or f"seed-{uuid.uuid4().hex}", budget, cap, tiers, via=via,
                        guide_cents=GUIDE_CENTS)


def secret_needles(tenants: Iterable[TenantSpec], campaigns: Iterable[CampaignSpec]) -> dict[str, bytes]:
    """What must never appear anywhere: keys (raw, hex in any case), seeds and derived draw keys.

    Hex needles are lower case and searched in lower-cased text."""
    needles: dict[str, bytes] = {}
    for t in tenants:
        needles[f"tenant {t.id} key (raw)"] = t.key
        needles[f"tenant {t.id} key (hex)"] = t.key.hex().encode()
    for c in campaigns:
        needles[f"campaign {c.id} seed"] = c.seed.encode()
        draw_key = c.model().key
        needles[f"campaign {c.id} draw key (raw)"] = draw_key
        needles[f"campaign {c.id} draw key (hex)"] = draw_key.hex().encode()
    return needles


def find_secrets(data: bytes, needles: dict[str, bytes]) -> list[str]:
    """Names of the needles found in ``data`` (hex ones case-insensitively)."""
    if not data:
        return []
    lower = None
    found = []
    for name, needle in needles.items():
        if name.endswith("(hex)"):
            lower = data.lower() if lower is None else lower
            if needle in lower:
                found.append(name)
        elif needle in data:
            found.append(name)
    return found


# --------------------------------------------------------------------------- registry and streams


def write_registry(directory: Path, worlds: list) -> None:
    """The CSV files for the synthetic worlds of several tenants (dealers prefixed per tenant)."""
    import csv

    from scanstream.streams.synthetic import ACTIVATIONS, BATCHES, DEALERS, PACKING, SHIPMENTS, STORES

    directory.mkdir(parents=True, exist_ok=True)
    rows = {"batches": [], "dealers": [], "shipments": [], "stores": [], "activations": [], "packing": []}
    for w in worlds:
        d = (lambda dealer, t=w.tenant: f"T{t}-{dealer}" if dealer else "")
        rows["batches"] += [(w.tenant, *b[1:]) for b in BATCHES]
        rows["dealers"] += [(d(i), w.tenant, name, ch, regions, manager, "")
                            for i, name, ch, regions, manager, _ in DEALERS]
        rows["shipments"] += [(w.tenant, b, k, lo, hi, d(dealer), "2026-11-01")
                              for _, b, k, lo, hi, dealer in SHIPMENTS]
        rows["stores"] += [(sid, w.tenant, d(dealer), w.districts[prefix][0][0], ch)
                           for sid, dealer, prefix, ch in STORES]
        rows["activations"] += [(w.tenant, *a[1:]) for a in ACTIVATIONS]
        rows["packing"] += [(w.tenant, *p[1:]) for p in PACKING]
    headers = {"batches": ["tenant", "batch", "kind", "sku", "product", "activated", "size"],
               "dealers": ["dealer_id", "tenant", "name", "channel", "regions", "manager", "webhook"],
               "shipments": ["tenant", "batch", "kind", "serial_from", "serial_to", "dealer_id", "shipped_at"],
               "stores": ["store_id", "tenant", "dealer_id", "region", "channel"],
               "activations": ["tenant", "batch", "kind", "serial_from", "serial_to", "sku", "product", "activated_at"],
               "packing": ["tenant", "case_batch", "case_serial", "unit_batch", "unit_serial_from", "unit_serial_to"]}
    for name, header in headers.items():
        with (directory / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows[name])


def make_stream(world, n: int, seed: int, id_prefix: str = "") -> list[bytes]:
    """``streams.synthetic.generate_scans`` with every scan_id (and bad event id) prefixed, and the
    dealer of each outbound scan named as ``write_registry`` names the tenant's dealers."""
    from scanstream.streams.synthetic import GUIDE_SALE_SHARE, generate_scans

    lines = generate_scans(world, n, seed=seed, guide_share=GUIDE_SALE_SHARE)
    out = []
    cache: dict[bytes, bytes] = {}
    for line in lines:
        if line in cache:  # a redelivered line stays the same bytes
            out.append(cache[line])
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("scan_id"), str):
            event["scan_id"] = id_prefix + event["scan_id"]
            if event.get("dealer_id"):
                event["dealer_id"] = f"T{world.tenant}-{event['dealer_id']}"
            new = orjson.dumps(event)
        else:
            new = line
        cache[line] = new
        out.append(new)
    return out


def inprocess_config(registry: Path, tenants: list[TenantSpec], campaigns: list[CampaignSpec], *,
                     redis_url: str | None = None, prefix: str = "scanstream-faults:", partitions: int = 4):
    """A ``Config`` for a ``BatchHandler`` in this process (``config/local.toml`` with our tenants,
    campaigns, registry and Redis; no ClickHouse unless the caller passes one to the handler)."""
    from dataclasses import replace

    from scanstream.engine.config import Tenant, load
    from scanstream.engine.keys import KeyTable

    base = load(REPO / "config" / "local.toml")
    return replace(base, tenants={t.id: Tenant(t.id, t.name or f"tenant {t.id}") for t in tenants},
                   keys=KeyTable({(t.id, t.key_id): t.key for t in tenants}), registry_dir=registry,
                   clickhouse="", state_backend="redis" if redis_url else "memory",
                   redis=replace(base.redis, url=redis_url or base.redis.url, prefix=prefix, result_ttl_s=600),
                   kafka=replace(base.kafka, partitions=partitions, scans_topic="fuzz-scans"),
                   campaigns=tuple(c.model() for c in campaigns))
