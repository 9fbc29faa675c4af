"""Running totals of a run: verdicts, diversion, prizes against budget, alerts."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from scanstream.engine.pipeline import BatchResult
from scanstream.engine.state import StateStore


def _count(values: np.ndarray) -> Counter:
    uniq, counts = np.unique(values, return_counts=True) if len(values) else ([], [])
    return Counter(dict(zip([str(u) for u in uniq], [int(c) for c in counts])))


@dataclass
class Summary:
    scans: int = 0
    verdicts: Counter = field(default_factory=Counter)
    diversion: Counter = field(default_factory=Counter)
    draws: Counter = field(default_factory=Counter)
    prizes: Counter = field(default_factory=Counter)  # campaign -> prizes won in this run
    cents: Counter = field(default_factory=Counter)  # campaign -> money won in this run
    alerts: Counter = field(default_factory=Counter)  # alert/subtype -> count
    replays: int = 0
    # campaign -> (prizes, guide commissions, cents) paid in this run, read from the state (set by the
    # driver): what was paid, prizes and commissions, whatever the rows say
    paid: dict = field(default_factory=dict)

    def add(self, result: BatchResult) -> None:
        s = result.scans
        self.scans += len(s["verdict"])
        self.verdicts += _count(s["verdict"])
        self.diversion += _count(s["diversion"][s["diversion"] != "none"])
        self.draws += _count(s["draw"][s["draw"] != "none"])
        self.replays += int(s["replay"].sum())
        new = s["replay"] == 0  # a replayed prize was counted when it was won
        won = (s["draw"] == "won") & new
        self.prizes += _count(s["campaign"][won])
        for camp in np.unique(s["campaign"][won]):
            self.cents[str(camp)] += int(s["prize_cents"][won & (s["campaign"] == camp)].sum())
        a = result.alerts
        self.alerts += _count(np.array([f"{k}/{t}" for k, t in zip(a["alert"], a["subtype"])], dtype=object))

    def render(self, state: StateStore, campaigns) -> str:
        lines = [f"scans: {self.scans:,}  (redelivered scan_ids: {self.replays:,})", "verdicts:"]
        for v, c in self.verdicts.most_common():
            lines.append(f"  {v:<16}{c:>12,}  {100 * c / max(self.scans, 1):6.2f} %")
        lines.append("diversion:" + ("" if self.diversion else " none"))
        for v, c in self.diversion.most_common():
            lines.append(f"  {v:<16}{c:>12,}")
        for camp in campaigns:
            st = state.campaign_state(camp.id)
            spent = camp.budget_cents - st.budget_left
            prizes, commissions, cents = self.paid.get(camp.id, (self.prizes[camp.id], 0, self.cents[camp.id]))
            guides = f"; {commissions:,} guide commissions included" if camp.guide_cents else ""
            lines.append(f"campaign {camp.id}: {prizes:,} prizes, "
                         f"{cents / 100:,.2f} yuan paid this run; budget used "
                         f"{spent / 100:,.2f} of {camp.budget_cents / 100:,.2f} yuan "
                         f"({100 * spent / max(camp.budget_cents, 1):.1f} %){guides}")
            for tier, left in zip(camp.tiers, st.stock_left):
                lines.append(f"  tier {tier.name:<8} {tier.cents / 100:>8.2f} yuan  stock left {left:,} of {tier.stock:,}")
        if self.draws:
            lines.append("draws: " + ", ".join(f"{k} {v:,}" for k, v in self.draws.most_common()))
        lines.append("alerts:" + ("" if self.alerts else " none"))
        for k, c in self.alerts.most_common():
            lines.append(f"  {k:<24}{c:>8,}")
        return "\n".join(lines)
