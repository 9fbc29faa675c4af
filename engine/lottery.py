"""The red-packet lottery (DESIGN.md "Campaign"): who may draw, what they draw, what is paid.

The draw is a pure function of (campaign seed, code): SipHash-2-4 keyed by the seed over the
code's identity, read as a uniform number in [0, 1) and mapped to a tier by cumulative
probability.  Anyone holding the configuration can re-derive a draw (``scanstream audit``),
and a redelivered scan draws the same tier.  Whether a drawn prize is *paid* is the state
store's decision (stock, budget, daily cap, one prize per code), taken atomically per batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from scanstream.engine import adcode
from scanstream.engine.codec import KIND_UNIT
from scanstream.engine.registry import batch_key
from scanstream.engine.outcomes import MS_PER_DAY, MS_PER_MINUTE, Columns, texts
from scanstream.engine.state import CampaignLimits, DrawStatus, GrantRequests, StateStore
from scanstream.engine.verdicts import Verdict
from scanstream.ext import codec
from scanstream.ext.scanparse import ROLES

#: The draw uses the top 53 bits of the hash: exactly representable as a float64 in [0, 1).
DRAW_BITS = 53
#: Personalisation of the seed -> key derivation, so a seed reused elsewhere gives another key.
SEED_PERSON = b"scanstream-draw"
#: The roles a campaign may reward.  Guides are paid commissions (``guide_cents``), not prizes;
#: warehouses are logistics, never a beneficiary.
PRIZE_ROLES = ("consumer", "dealer", "store")


@dataclass(frozen=True)
class Tier:
    name: str
    cents: int
    probability: float
    stock: int


@dataclass(frozen=True)
class Campaign:
    """One campaign of the configuration; ``seed`` never appears in ``repr``."""

    id: str
    tenant: int
    start_ms: int
    end_ms: int  # exclusive
    budget_cents: int
    daily_cap: int
    tiers: tuple[Tier, ...]
    seed: str = field(repr=False)
    skus: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    utc_offset_minutes: int = 480  # China Standard Time: a user's "day" ends at local midnight
    # who may win (DESIGN.md "Campaign"): consumers by default; ("store",) with kinds ("case",)
    # is 开箱有礼, store owners opening a case and scanning the case code inside
    roles: tuple[str, ...] = ("consumer",)
    kinds: tuple[int, ...] = (KIND_UNIT,)
    # 超级导购码: what a unit's guide earns when its consumer's first scan wins a prize here,
    # paid from the same budget after the prize (0: no commissions)
    guide_cents: int = 0

    @property
    def key(self) -> bytes:
        """The 16-byte draw key derived from the seed."""
        return hashlib.blake2b(self.seed.encode("utf-8"), digest_size=16, person=SEED_PERSON).digest()

    @property
    def limits(self) -> CampaignLimits:
        return CampaignLimits(self.id, self.budget_cents, tuple(t.stock for t in self.tiers), self.daily_cap)

    def cumulative(self) -> np.ndarray:
        return np.cumsum([t.probability for t in self.tiers])


def draw_numbers(campaign: Campaign, tenant: np.ndarray, kind: np.ndarray, batch: np.ndarray,
                 serial: np.ndarray) -> np.ndarray:
    """Each code's draw in [0, 1) for this campaign."""
    h = codec.keyed_hash(campaign.key, tenant, kind, batch, serial)
    return (h >> np.uint64(64 - DRAW_BITS)).astype(np.float64) / float(1 << DRAW_BITS)


def draw_tiers(campaign: Campaign, numbers: np.ndarray) -> np.ndarray:
    """Tier index for each draw number, -1 when it falls past the last tier (no prize)."""
    tier = np.searchsorted(campaign.cumulative(), numbers, side="right")
    return np.where(tier < len(campaign.tiers), tier, -1).astype(np.int16)


@dataclass
class LotteryResult:
    campaign: np.ndarray  # object: campaign id or ''
    draw: np.ndarray  # uint8 DrawStatus
    tier: np.ndarray  # object: tier name or ''
    cents: np.ndarray  # uint32
    awarded: np.ndarray  # bool: rows that hold a prize (new or given back on replay)
    guide: np.ndarray  # object: the guide paid a commission with the row's prize, '' for none
    commission: np.ndarray  # uint32: that commission's cents


@dataclass
class Draws:
    """The pure half of the lottery over a batch: which campaign applies to each scan, which scans
    may win it, and what each of those drew (``Lottery.draw``); ``Lottery.pay`` settles them."""

    campaign_idx: np.ndarray  # int64 per scan: the campaign that applies (-1: none)
    draw: np.ndarray  # uint8 DrawStatus per scan before payment (NONE, INELIGIBLE, BLOCKED)
    rows: np.ndarray  # the scans that may win, in scan order
    campaign: np.ndarray  # per row: index of the campaign it may win
    tier: np.ndarray  # int16 per row: the drawn tier, -1 for no prize
    cents: np.ndarray  # int64 per row: the drawn tier's amount
    day: np.ndarray  # int64 per row: the scan's day in the campaign's time zone
    commission: np.ndarray  # int64 per row: what the unit's guide would earn with the prize (0: none)

    @property
    def asks_guide(self) -> np.ndarray:
        """Per scan: it drew a prize that would pay its unit's guide a commission, so it needs to
        know that guide (``engine.guides``); nine in ten consumer scans draw no prize and do not."""
        out = np.zeros(len(self.campaign_idx), bool)
        out[self.rows[(self.tier >= 0) & (self.commission > 0)]] = True
        return out


class Lottery:
    """The lottery stage: eligibility and draw (pure, ``draw``), payment (state store, ``pay``)."""

    def __init__(self, campaigns: list[Campaign], state: StateStore):
        self.campaigns = campaigns
        self.state = state
        state.define_campaigns([c.limits for c in campaigns])

    def draw(self, cols: Columns, verdict: np.ndarray, sku: np.ndarray, place: tuple[np.ndarray, np.ndarray],
             blocked: np.ndarray | None = None) -> Draws:
        """Eligibility and draws over a batch: ``cols`` the parsed columns (tenant, kind, batch,
        serial, ts, role, user_id), and what the earlier stages decided: verdicts, each code's sku
        and place (enrich), which scanners are blocked (enumeration defence).  Pure: the state is
        not asked."""
        tenant, kind, batch, serial, ts = cols["tenant"], cols["kind"], cols["batch"], cols["serial"], cols["ts"]
        role_no = cols["role_no"]  # roles as their numbers in ROLES: compared as integers
        n = len(tenant)
        campaign_idx = np.full(n, -1, np.int64)
        eligible_idx = np.full(n, -1, np.int64)
        may_win = verdict == Verdict.OK
        if blocked is not None:
            may_win &= ~blocked
        could_win = np.zeros(n, bool)  # some campaign that applies rewards the scan's role and kind
        for ci, c in enumerate(self.campaigns):
            applies = (tenant == c.tenant) & (ts >= c.start_ms) & (ts < c.end_ms)
            if not applies.any():
                continue
            audience = applies & _any_of(role_no, tuple(ROLES.index(r) for r in c.roles if r in ROLES)) \
                & _any_of(kind, c.kinds)
            could_win |= audience
            eligible = audience & may_win
            if c.skus:
                allowed = set(c.skus)
                eligible &= np.fromiter(map(allowed.__contains__, sku.tolist()), bool, n)
            if c.regions:
                eligible &= adcode.under_any(place[0], place[1], c.regions)
            # the first campaign (in configuration order) that a scan may win takes it
            take = eligible & (eligible_idx < 0)
            eligible_idx[take] = ci
            campaign_idx[(campaign_idx < 0) & applies] = ci
        campaign_idx = np.where(eligible_idx >= 0, eligible_idx, campaign_idx)

        draw = np.full(n, DrawStatus.NONE, np.uint8)
        draw[campaign_idx >= 0] = DrawStatus.INELIGIBLE
        if blocked is not None:  # say why: the scanner is blocked, not the scan
            draw[(campaign_idx >= 0) & blocked & (verdict == Verdict.OK) & could_win] = DrawStatus.BLOCKED
        rows = np.nonzero(eligible_idx >= 0)[0]
        tiers = np.full(len(rows), -1, np.int16)
        amounts = np.zeros(len(rows), np.int64)
        day = np.zeros(len(rows), np.int64)
        commission = np.zeros(len(rows), np.int64)
        for ci in _present(eligible_idx[rows]):
            c = self.campaigns[ci]
            sel = eligible_idx[rows] == ci
            r = rows[sel]
            tiers[sel] = draw_tiers(c, draw_numbers(c, tenant[r], kind[r], batch[r], serial[r]))
            amounts[sel] = np.array([t.cents for t in c.tiers] + [0], np.int64)[tiers[sel]]
            day[sel] = (ts[r] + c.utc_offset_minutes * MS_PER_MINUTE) // MS_PER_DAY
            if c.guide_cents:  # a consumer's prize on a unit (engine/config.py refuses other roles)
                commission[sel] = np.where(kind[r] == KIND_UNIT, c.guide_cents, 0)
        return Draws(campaign_idx, draw, rows, eligible_idx[rows], tiers, amounts, day, commission)

    def pay(self, draws: Draws, cols: Columns, guide: np.ndarray | None = None) -> LotteryResult:
        """Settle ``draws`` in the state store: each drawn prize within stock, budget and caps, and
        with it the commission of the unit's guide (``guide`` per scan, '' for none) where the
        campaign pays one."""
        tenant, kind, batch, serial = cols["tenant"], cols["kind"], cols["batch"], cols["serial"]
        n = len(tenant)
        draw, rows = draws.draw.copy(), draws.rows
        tier_name = texts(n)
        cents = np.zeros(n, np.uint32)
        paid_guide, paid_cents = texts(n), np.zeros(n, np.uint32)
        if len(rows):
            guides = texts(len(rows)) if guide is None else guide[rows]
            grants = self.state.grant(GrantRequests(
                campaign=draws.campaign, code=batch_key(tenant[rows], kind[rows], batch[rows]),
                serial=serial[rows], user=cols["user_id"][rows], day=draws.day, tier=draws.tier, cents=draws.cents,
                guide=guides, commission=np.where(guides != "", draws.commission, 0)))
            draw[rows] = grants.status
            won = grants.tier >= 0
            for ci in _present(draws.campaign[won]):
                names = np.array([t.name for t in self.campaigns[ci].tiers], dtype=object)
                sel = won & (draws.campaign == ci)
                tier_name[rows[sel]] = names[grants.tier[sel]]
            cents[rows[won]] = grants.cents[won]
            paid = grants.commission > 0
            paid_guide[rows[paid]] = guides[paid]
            paid_cents[rows[paid]] = grants.commission[paid]
        camp = texts(n)
        ids = np.array([c.id for c in self.campaigns] + [""], dtype=object)
        camp[:] = ids[draws.campaign_idx]
        return LotteryResult(camp, draw, tier_name, cents, draw == DrawStatus.WON, paid_guide, paid_cents)


def _any_of(values: np.ndarray, wanted: tuple) -> np.ndarray:
    """``values`` equal to one of the few ``wanted`` (none: all False): one comparison each, where
    ``np.isin`` would sort."""
    out = np.zeros(len(values), bool)
    for w in wanted:
        out |= values == w
    return out


def _present(index: np.ndarray) -> np.ndarray:
    """The distinct values of ``index`` (campaign indexes, >= 0), sorted: counted, where ``np.unique``
    would hash or sort the whole column for a handful of campaigns."""
    return np.flatnonzero(np.bincount(index)) if len(index) else np.zeros(0, np.int64)
