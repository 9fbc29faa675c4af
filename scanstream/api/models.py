"""The gateway's contract as pydantic models: the scan event of DESIGN.md and every answer.

``/openapi.json`` is generated from these (``tests/test_api.py`` checks ``ScanEvent`` against
DESIGN's event schema table).  They document; they do not decide: a scan is checked by the
worker's own parse stage (``streams.publisher.check_event``), so the gateway and the worker
cannot disagree on what is ``invalid_event``.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from scanstream.engine.verdicts import Verdict
from scanstream.ext.scanparse import ACTIONS, MAX_ID_CHARS, ROLES, TS_MAX_MS, TS_MIN_MS

# The bounds below are the parse stage's own, so the document says what the gateway refuses
# (and a generated client, or a fuzzer, sends events the gateway takes).
#: An integer the publisher can write (orjson: 64 bits, signed or not).
Whole = Annotated[int, Field(ge=-(2 ** 63), le=2 ** 64 - 1)]
#: Identifiers may be integers too: the parse stage keeps them as their text.
Ident = Annotated[str, Field(max_length=MAX_ID_CHARS)] | Whole
#: scan_id and user_id: an empty one makes the event invalid.
RequiredIdent = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)] | Whole
#: RFC 3339 with a zone, or epoch milliseconds; either in 2000..2100.
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})] | Annotated[int, Field(ge=TS_MIN_MS,
                                                                                                lt=TS_MAX_MS)]
#: An adcode as text: 2, 4 or 6 ASCII digits (or empty: no region).
Adcode = Annotated[str, Field(pattern=r"^([0-9]{2}){0,3}$")] | Whole
Role = Literal[ROLES]  # type: ignore[valid-type]
Action = Literal[tuple(ACTIONS)]  # type: ignore[valid-type]
VerdictName = Literal[tuple(v.label for v in Verdict)]  # type: ignore[valid-type]
DIVERSIONS = ("none", "region", "channel", "region+channel")


def _id(text: str) -> dict:
    return {"description": f"{text} (a string of at most {MAX_ID_CHARS} characters, or an integer)"}


class ScanEvent(BaseModel):
    """One scan, as the scan API forwards it (DESIGN.md "Scan event")."""

    model_config = ConfigDict(extra="allow", title="ScanEvent")

    scan_id: RequiredIdent = Field(json_schema_extra=_id("unique id of this scan; a resent scan has the same scan_id"))
    ts: Time = Field(description="scan time: RFC 3339 with a zone, or epoch milliseconds; in 2000..2100")
    code: str = Field(description="the code (24 Crockford base32 characters), or the QR URL that ends with it")
    user_id: RequiredIdent = Field(json_schema_extra=_id("the scanner's account, e.g. a WeChat openid"))
    role: Role = Field("consumer", description="who scanned")
    store_id: Ident | None = Field(None, json_schema_extra=_id("for store scans; the store registry gives its place"))
    channel: Ident | None = Field(None, json_schema_extra=_id("the channel the scan came through"))
    region: Adcode | None = Field(None, description="adcode of the scan place: 2, 4 or 6 digits")
    lat: float | None = Field(None, ge=-90, le=90, description="GPS latitude; resolved to an adcode without region")
    lon: float | None = Field(None, ge=-180, le=180, description="GPS longitude")
    ip: Ident | None = Field(None, json_schema_extra=_id("kept for fraud analysis"))
    device_id: Ident | None = Field(None, json_schema_extra=_id("kept for fraud analysis"))
    action: Action | None = Field(None, description="trade events: ship (role warehouse), sell (role guide)")
    dealer_id: Ident | None = Field(None, json_schema_extra=_id("an outbound scan's dealer (action ship)"))


class Prize(BaseModel):
    tier: str = Field(description="the prize tier's name")
    cents: int = Field(description="the amount paid, in cents (fen)")


class ScanOutcome(BaseModel):
    """The worker's outcome of one scan (DESIGN.md "Verdicts" and "Outputs")."""

    scan_id: str
    verdict: VerdictName
    prize: Prize | None = Field(description="the prize paid for this scan; null when none")
    diversion: Literal[DIVERSIONS]  # type: ignore[valid-type]
    replay: bool = Field(description="true when the scan_id was seen before with the same event (a redelivery)")
    draw: str = Field(description="why a prize was paid or not: won, no_prize, out_of_stock, budget, cap, "
                                  "ineligible, blocked, none")
    campaign: str
    tenant: int
    sku: str
    dealer_id: str
    region: str
    channel: str
    reason: str = Field(description="why the event was invalid, when it was")


class Pending(BaseModel):
    """The outcome did not come back within the deadline; the scan is published (once) and will."""

    scan_id: str
    poll: str = Field(description="GET this address for the outcome: 404 until it is there")


class BatchAnswer(BaseModel):
    results: list[ScanOutcome | Pending] = Field(description="one per scan, in request order")


class Problem(BaseModel):
    """RFC 9457 problem details, the one shape of every error answer."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str
    field: str | None = Field(None, description="the request field at fault, when one is")
    index: int | None = Field(None, description="the scan's position in a batch, when one is at fault")
    failed: dict[str, str] | None = Field(None, description="readiness: each service that did not answer, and why")


class Health(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str] | None = None


def outcome(reply: dict) -> ScanOutcome:
    """A worker's reply (``engine.outcomes.OUTCOME_FIELDS``) as the answer to the scan API."""
    cents = int(reply.get("prize_cents") or 0)
    prize = Prize(tier=reply.get("prize_tier") or "", cents=cents) if cents > 0 else None
    return ScanOutcome(scan_id=str(reply["scan_id"]), verdict=reply["verdict"], prize=prize,
                       diversion=reply.get("diversion") or "none", replay=bool(reply.get("replay")),
                       draw=reply.get("draw") or "none", campaign=reply.get("campaign") or "",
                       tenant=int(reply.get("tenant") or 0), sku=reply.get("sku") or "",
                       dealer_id=reply.get("dealer_id") or "", region=reply.get("region") or "",
                       channel=reply.get("channel") or "", reason=reply.get("reason") or "")
