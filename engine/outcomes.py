"""The output contracts: one row per scan, per alert and per award, as named, typed columns.

Every sink (results file, ClickHouse, chdb, Kafka) writes these columns and nothing else, so
the column lists below are the single place where an output field is defined.  A batch is a
dict of column name -> numpy array (strings are object arrays of ``str``), all of one length.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import orjson

from scanstream.ext.jsonlines import encode_rows

#: Per-scan outcome: DESIGN.md "Outputs", then fields kept for fraud analysis and audit.
#: (name, numpy dtype, ClickHouse type)
SCAN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scan_id", "O", "String"),
    ("ts", "int64", "DateTime64(3, 'UTC')"),  # epoch milliseconds
    ("tenant", "uint16", "UInt16"),
    ("kind", "uint8", "UInt8"),
    ("batch", "uint32", "UInt32"),
    ("serial", "uint32", "UInt32"),
    ("code", "O", "String"),
    ("user_id", "O", "String"),
    ("role", "O", "LowCardinality(String)"),
    ("region", "O", "LowCardinality(String)"),
    ("channel", "O", "LowCardinality(String)"),
    ("sku", "O", "LowCardinality(String)"),
    ("dealer_id", "O", "LowCardinality(String)"),
    ("verdict", "O", "LowCardinality(String)"),
    ("diversion", "O", "LowCardinality(String)"),
    ("campaign", "O", "LowCardinality(String)"),
    ("prize_tier", "O", "LowCardinality(String)"),
    ("prize_cents", "uint32", "UInt32"),
    # why the lottery did or did not pay: won, no_prize, out_of_stock, budget, cap, ineligible, none
    ("draw", "O", "LowCardinality(String)"),
    ("store_id", "O", "String"),
    ("device_id", "O", "String"),
    ("ip", "O", "String"),
    ("replay", "uint8", "UInt8"),  # 1 when this scan_id had been seen before
    ("reason", "O", "String"),  # why an event is invalid_event; empty otherwise
    ("raw", "O", "String"),  # the original line of an invalid_event; empty otherwise
)

#: Event time is epoch milliseconds (``ts``); window and day lengths convert with these.
MS_PER_MINUTE = 60_000
MS_PER_DAY = 24 * 60 * MS_PER_MINUTE

#: Fields of an outcome line (the results file, the scan API's reply, a ``scan-results`` message):
#: DESIGN.md "Outputs", then why a draw paid or not, whether the scan_id was a redelivery, and why
#: an event was invalid.
OUTCOME_FIELDS: tuple[str, ...] = (
    "scan_id", "ts", "tenant", "kind", "batch", "serial", "code", "user_id", "role", "region", "channel", "sku",
    "dealer_id", "verdict", "diversion", "campaign", "prize_tier", "prize_cents", "draw", "replay", "reason",
)

#: One fired alert (diversion, cloned code, ...).
ALERT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("alert_id", "O", "String"),  # deterministic: the same evidence gives the same id
    ("ts", "int64", "DateTime64(3, 'UTC')"),  # event time of the scan that fired it
    ("tenant", "uint16", "UInt16"),
    ("alert", "O", "LowCardinality(String)"),  # diversion | cloned_code
    ("subtype", "O", "LowCardinality(String)"),  # region | channel | region+channel | users | provinces
    ("dealer_id", "O", "LowCardinality(String)"),
    ("manager", "O", "String"),
    ("city", "O", "LowCardinality(String)"),  # adcode prefix of the scan city (4 digits)
    ("code", "O", "String"),  # the code, for cloned_code alerts
    ("window_start", "int64", "DateTime64(3, 'UTC')"),
    ("window_end", "int64", "DateTime64(3, 'UTC')"),
    ("count", "uint32", "UInt32"),
    ("detail", "O", "String"),  # JSON with the evidence (regions, roles, users ...)
)

#: One granted prize.
AWARD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scan_id", "O", "String"),
    ("ts", "int64", "DateTime64(3, 'UTC')"),
    ("tenant", "uint16", "UInt16"),
    ("campaign", "O", "LowCardinality(String)"),
    ("kind", "uint8", "UInt8"),
    ("batch", "uint32", "UInt32"),
    ("serial", "uint32", "UInt32"),
    ("user_id", "O", "String"),
    ("prize_tier", "O", "LowCardinality(String)"),
    ("prize_cents", "uint32", "UInt32"),
    ("beneficiary", "O", "LowCardinality(String)"),  # one of BENEFICIARIES: who ``user_id`` is
    ("payout_key", "O", "String"),  # the payout's idempotency key (``payout_keys``)
)

#: Who an award pays (column ``beneficiary``): the scanner as a consumer, the scanner as the
#: trade (a store owner's 开箱有礼 prize), or a shopping guide's commission.  A code pays at
#: most once per beneficiary, so the payout key is derived from it, never from the scan.
BENEFICIARY_CONSUMER, BENEFICIARY_TRADE, BENEFICIARY_GUIDE = "consumer", "trade", "guide"
BENEFICIARIES = (BENEFICIARY_CONSUMER, BENEFICIARY_TRADE, BENEFICIARY_GUIDE)
#: Names the derivation of ``payout_keys``: a new derivation gets a new version, so that no key of
#: the old one can ever equal a key of the new one.
PAYOUT_KEY_VERSION = "scanstream-payout-v1"
#: Hex digits of a payout key: 128 bits, and WeChat Pay's out_trade_no takes at most 32 characters.
PAYOUT_KEY_HEX = 32

#: One webhook delivery of an alert (written by the notifiers, table ``alert_deliveries``).
DELIVERY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("alert_id", "O", "String"),
    ("ts", "int64", "DateTime64(3, 'UTC')"),  # when the last attempt ended
    ("channel_format", "O", "LowCardinality(String)"),  # generic | wecom | dingtalk
    ("url", "O", "String"),  # secrets in the query string redacted
    ("status", "O", "LowCardinality(String)"),  # delivered | failed
    ("attempts", "uint8", "UInt8"),
    ("http_status", "uint16", "UInt16"),
    ("error", "O", "String"),
)

Columns = dict[str, np.ndarray]


def names(columns: tuple[tuple[str, str, str], ...]) -> list[str]:
    """Column names in contract order."""
    return [c[0] for c in columns]


def texts(n: int) -> np.ndarray:
    """A column of ``n`` empty strings.  Filled by one assignment: ``np.full(n, "", dtype=object)``
    converts its fill value once per row, ten times the cost."""
    out = np.empty(n, dtype=object)
    out[:] = ""
    return out


def empty(columns: tuple[tuple[str, str, str], ...], n: int = 0) -> Columns:
    """A batch of ``n`` rows: zeros and empty strings."""
    return {name: texts(n) if dtype == "O" else np.zeros(n, dtype=dtype) for name, dtype, _ in columns}


def concat(columns: tuple[tuple[str, str, str], ...], parts: list[Columns]) -> Columns:
    """Rows of several batches, in order."""
    if not parts:
        return empty(columns)
    return {name: np.concatenate([p[name] for p in parts]) for name, _, _ in columns}


def rows(batch: Columns, columns: tuple[tuple[str, str, str], ...]) -> list[dict[str, Any]]:
    """The batch as a list of plain dicts (for JSON outputs), ``ts`` fields left as epoch ms."""
    cols = [(name, batch[name].tolist()) for name, _, _ in columns]
    n = len(cols[0][1]) if cols else 0
    return [{name: values[i] for name, values in cols} for i in range(n)]


def length(batch: Columns) -> int:
    """Rows in a batch."""
    return len(next(iter(batch.values()))) if batch else 0


def payout_keys(tenant: np.ndarray, campaign: np.ndarray, kind: np.ndarray, batch: np.ndarray,
                serial: np.ndarray, beneficiary: np.ndarray) -> np.ndarray:
    """The payout idempotency key of each award (DESIGN.md "Outputs"): 32 hex digits of SHA-256
    over (tenant, campaign, the code's identity (kind, batch, serial), beneficiary).

    The same award always gets the same key, whichever scan won it, however often its message
    is redelivered or exported, and even if a lost state let the code win again: a payment
    service that passes the key on as out_trade_no pays each (campaign, code, beneficiary) once.
    The fields are hashed as a JSON array, so no campaign id can shift text into the next field.
    A loop over the awards only (a small share of the scans; SHA-256 has no vectorised form in
    numpy), about 1 us an award."""
    out = np.empty(len(tenant), dtype=object)
    # the JSON array written piece by piece, as orjson writes a list (its items' JSON joined by
    # commas, no spaces): the few distinct strings are encoded once, the integers as decimals
    text = {v: orjson.dumps(v) for v in set(campaign.tolist()) | set(beneficiary.tolist())}
    array = b"[" + orjson.dumps(PAYOUT_KEY_VERSION).replace(b"%", b"%%") + b",%d,%b,%d,%d,%d,%b]"
    messages = [array % (t, text[c], k, b, s, text[who]) for t, c, k, b, s, who in zip(
        tenant.tolist(), campaign.tolist(), kind.tolist(), batch.tolist(), serial.tolist(), beneficiary.tolist())]
    out[:] = [hashlib.sha256(m).hexdigest()[:PAYOUT_KEY_HEX] for m in messages]
    return out


def outcome_lines(scans: Columns) -> list[bytes]:
    """Each scan's outcome as one JSON object of ``OUTCOME_FIELDS`` (byte for byte what orjson
    writes for the row's dict; written in Cython, about 2 us a scan)."""
    return encode_rows(OUTCOME_FIELDS, [scans[f].tolist() for f in OUTCOME_FIELDS])
