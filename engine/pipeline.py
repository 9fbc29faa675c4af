"""``engine.Pipeline``: a batch of raw scan events in, a batch of outcomes out.

The stages run in DESIGN.md's order, each over whole columns:

1. parse      ``ext.scanparse``: JSON lines -> columns; unusable events -> ``invalid_event``
2. verify     ``ext.codec``: base32 + SipHash MAC -> ``malformed`` / ``unknown_tenant`` / ``bad_mac``
3. enrich     ``engine.enrich``: registry -> ``unknown_batch`` / ``not_activated``, dealer, place
4. dedup      state store ``claim`` -> ``repeat`` / ``ok``; a known scan_id gets its first answer
5. diversion  ``engine.bindings``: outbound scans bind goods to a dealer, every scan finds where its
              goods went; ``engine.diversion``: region / channel mismatch, windowed alerts, cloned codes;
              ``engine.enumeration``: scanners submitting many forged codes, block list
6. lottery    ``engine.guides``: guides' sale scans, each unit's guide; ``engine.lottery``: draw, then
              pay within stock, budget and daily cap, and the guide's commission after the prize
7. emit       the caller hands the returned batches to its sinks

The pipeline knows nothing of Kafka, files or ClickHouse; the same object runs under the local
driver and under a Faust worker, with the memory or the Redis state store.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from scanstream.engine import bindings
from scanstream.engine import guides
from scanstream.engine import diversion as div
from scanstream.engine.audiences import CONSUMERS, audiences, claim_keys
from scanstream.engine import outcomes
from scanstream.engine.config import Config
from scanstream.engine.conflicts import conflict_alerts
from scanstream.engine.enrich import enrich
from scanstream.engine.enumeration import EnumerationGuard
from scanstream.engine.lottery import Lottery
from scanstream.engine.registry import Registry, batch_key
from scanstream.engine.state import DRAW_LABELS, OUTCOME_REF, StateStore
from scanstream.engine.verdicts import LABELS, Verdict
from scanstream.ext import codec
from scanstream.ext.scanparse import parse_events


#: The ``prize_tier`` of a guide's commission in the awards (no tier of a campaign is drawn for it).
COMMISSION_TIER = "commission"


@dataclass
class BatchResult:
    """Everything one batch produced: one scan row per input event, in input order."""

    scans: outcomes.Columns
    alerts: outcomes.Columns
    awards: outcomes.Columns
    #: ``OUTCOME_REF`` per scan: where the state store recorded its code step (token 0: nowhere).
    #: Not an output: the worker files a new scan's first outcome there for the scan API
    #: (``streams/replies.py``); None where nobody made one (a result put together from parts)
    refs: np.ndarray | None = None


class Pipeline:
    """The seven stages over one batch at a time; state lives in the state store, not here."""

    def __init__(self, config: Config, registry: Registry, state: StateStore,
                 resolve_gps: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.config = config
        self.registry = registry
        self.state = state
        self.resolve_gps = resolve_gps
        self.lottery = Lottery(list(config.campaigns), state)
        self.windows = div.AlertWindows(config.diversion, registry, state, code_groups=config.kafka.partitions)
        self.enumeration = EnumerationGuard(config.enumeration, state)

    def set_registry(self, registry: Registry) -> None:
        """Use ``registry`` from the next batch on (registry updates without a restart)."""
        self.registry = registry
        self.windows.registry = registry

    def process(self, lines: Sequence[bytes | str], positions: np.ndarray | None = None) -> BatchResult:
        """Outcomes of one batch of raw events (one JSON object each).

        ``positions`` names where each line came from (``file:line``, ``topic/partition@offset``);
        an event without a usable scan_id is stored under ``pos:<position>`` so that it keeps
        its own row, and the same row when it is delivered again.
        """
        lines = lines if isinstance(lines, list) else list(lines)
        n = len(lines)
        # 1 parse
        cols = parse_events(lines)
        valid = cols["fingerprint"] != 0  # the parser fingerprints exactly the usable events
        _name_anonymous(cols, lines, positions, valid)
        # 2 verify
        v = codec.verify_batch(cols["code"], self.config.keys)
        verdict = np.where(valid, v.verdict, Verdict.INVALID_EVENT).astype(np.uint8)
        for name in ("kind", "tenant", "batch", "serial"):
            cols[name] = np.where(valid, getattr(v, name), 0).astype(getattr(v, name).dtype)
        # 3 enrich
        e = enrich(self.registry, cols, verdict, self.resolve_gps)
        verdict, cols["region"], cols["channel"] = e.verdict, e.region, e.channel
        refused = bindings.refuse_unknown_dealers(self.registry, cols, verdict)
        verdict[refused], valid[refused] = Verdict.INVALID_EVENT, False
        # 4 dedup: valid, activated codes get a bit per audience (engine/audiences.py: a store's
        # scan does not use up the consumer's first scan); every readable scan has its answer remembered
        # with its event's fingerprint.  The same scan_id with the same event is a redelivery
        # (its first answer again); with another event it is a conflict, which claims nothing.
        # An invalid event is judged by its own bytes: a poison message that reuses an earlier
        # scan_id must not pass for that scan's redelivery.
        replay = np.zeros(n, bool)
        first_user = outcomes.texts(n)
        outcome_ref = np.zeros(n, OUTCOME_REF)  # where the scan API finds a first outcome (streams/replies.py)
        readable = np.nonzero(valid)[0]
        if len(readable):
            claims = self.state.claim(cols["scan_id"][readable], cols["fingerprint"][readable],
                                      cols["user_id"][readable],
                                      claim_keys(batch_key(cols["tenant"][readable], cols["kind"][readable],
                                                           cols["batch"][readable]), cols["role_no"][readable]),
                                      cols["serial"][readable], verdict[readable])
            verdict[readable], replay[readable] = claims.verdict, claims.replay
            first_user[readable] = claims.first_user
            if claims.ref is not None:
                outcome_ref[readable] = claims.ref
        conflicts = conflict_alerts(np.nonzero(verdict == Verdict.CONFLICT)[0], cols, first_user)
        # 5 diversion, against where the goods were sent (an outbound scan's binding, else shipments.csv)
        routing = bindings.route(self.registry, self.state, cols, verdict, replay, e.dealer)
        diversion = div.judge(self.registry, routing.dealer, e.place, e.channel, verdict, cols["role_no"])
        verified = ((verdict == Verdict.OK) | (verdict == Verdict.REPEAT)) & ~replay
        alerts = outcomes.concat(outcomes.ALERT_COLUMNS, [
            conflicts,
            self.windows.diversion_alerts(np.nonzero(verified & (diversion > 0))[0], cols, routing, diversion),
            self.windows.clone_alerts(np.nonzero(verified)[0], cols, routing.dealer, e.place,
                                      first_scan=verdict == Verdict.OK),
        ])
        # 5b enumeration defence: many forged codes from one scanner -> alert, block list
        guard = self.enumeration.run(cols, verdict, replay)
        alerts = outcomes.concat(outcomes.ALERT_COLUMNS, [alerts, guard.alerts])
        # 6 lottery: the draws (pure); then, in scan order, the guides' sales and the guides of the units
        # whose draw won a prize that pays one a commission; then payment of prizes and commissions
        draws = self.lottery.draw(cols, verdict, e.sku, e.place, blocked=guard.blocked)
        guide = guides.unit_guides(self.state, cols, verdict, replay, guard.blocked, draws.asks_guide)
        lot = self.lottery.pay(draws, cols, guide)
        # 7 emit
        scans = {
            "scan_id": cols["scan_id"], "ts": cols["ts"], "tenant": cols["tenant"], "kind": cols["kind"],
            "batch": cols["batch"], "serial": cols["serial"], "code": cols["code"], "user_id": cols["user_id"],
            "role": cols["role"], "region": e.region, "channel": e.channel, "sku": e.sku,
            "dealer_id": routing.dealer_id, "verdict": LABELS[verdict], "diversion": div.DIVERSION_LABELS[diversion],
            "campaign": lot.campaign, "prize_tier": lot.tier, "prize_cents": lot.cents,
            "draw": DRAW_LABELS[lot.draw], "store_id": cols["store_id"], "device_id": cols["device_id"],
            "ip": cols["ip"], "replay": replay.astype(np.uint8), "reason": cols["reason"], "raw": cols["raw"],
        }
        won = np.nonzero(lot.awarded)[0]
        # a store owner's 开箱有礼 prize is the trade's, apart from the consumer's prize on that code
        beneficiary = np.where(audiences(cols["role_no"][won]) == CONSUMERS, outcomes.BENEFICIARY_CONSUMER,
                               outcomes.BENEFICIARY_TRADE).astype(object)
        # a guide's commission is an award of its own, right after the prize that earned it (awards
        # in scan order, so that a stream cut into other batches gives the same rows in the same order)
        earned = np.nonzero(lot.commission)[0]
        order = np.argsort(np.concatenate([won, earned]), kind="stable")
        rows = np.concatenate([won, earned])[order]
        beneficiary = np.concatenate([beneficiary, np.full(len(earned), outcomes.BENEFICIARY_GUIDE,
                                                           dtype=object)])[order]
        awards = {
            "scan_id": cols["scan_id"][rows], "ts": cols["ts"][rows], "tenant": cols["tenant"][rows],
            "campaign": lot.campaign[rows], "kind": cols["kind"][rows], "batch": cols["batch"][rows],
            "serial": cols["serial"][rows],
            "user_id": np.concatenate([cols["user_id"][won], lot.guide[earned]])[order],
            "prize_tier": np.concatenate([lot.tier[won], np.full(len(earned), COMMISSION_TIER, dtype=object)])[order],
            "prize_cents": np.concatenate([lot.cents[won], lot.commission[earned]])[order], "beneficiary": beneficiary,
            "payout_key": outcomes.payout_keys(cols["tenant"][rows], lot.campaign[rows], cols["kind"][rows],
                                               cols["batch"][rows], cols["serial"][rows], beneficiary),
        }
        # nothing of the batch is told before its state writes would survive a failover
        self.state.durable()
        return BatchResult(scans, alerts, awards, outcome_ref)


def _name_anonymous(cols: dict[str, np.ndarray], lines: list, positions: np.ndarray | None,
                    valid: np.ndarray) -> None:
    # a usable event has a scan_id: only the others are looked at
    invalid = np.nonzero(~valid)[0]
    missing = invalid[cols["scan_id"][invalid] == ""]
    if not len(missing):
        return
    if positions is not None:
        cols["scan_id"][missing] = ["pos:" + str(positions[i]) for i in missing]
    else:  # without positions, the content is the only stable name
        cols["scan_id"][missing] = ["raw:" + hashlib.blake2b(
            lines[i] if isinstance(lines[i], bytes) else str(lines[i]).encode("utf-8", "replace"),
            digest_size=12).hexdigest() for i in missing]
