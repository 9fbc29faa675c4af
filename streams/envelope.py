"""How scans travel on the ``scans`` topic: one scan per message, or a batch envelope.

A batch envelope is one Kafka message whose value holds many scan events as JSON lines and
whose ``content-type`` header is ``application/x-ndjson``.  It is the fast path: a Faust agent
pays its per-message cost once per envelope instead of once per scan.  A message without that
header is one scan event (``application/json``).  The publisher puts only scans of one
partition into an envelope, so per-code ordering holds either way.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

CONTENT_TYPE = "content-type"
SINGLE = "application/json"
ENVELOPE = "application/x-ndjson"
#: An envelope larger than this is refused by the publisher (brokers cap messages at ~1 MB).
MAX_ENVELOPE_BYTES = 900_000


class EnvelopeError(ValueError):
    """A message that cannot be read as scans; the worker dead-letters it with this reason."""


def header(headers: Sequence[tuple[str, bytes]] | dict | None) -> str:
    """The content type named by a message's headers (default: a single scan), as given."""
    if not headers:
        return SINGLE
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if str(name).lower() == CONTENT_TYPE:
            return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()
    return SINGLE


def media_type(content_type: str) -> str:
    """The media type of a content-type value, or ``EnvelopeError`` for a charset other than UTF-8.

    ``application/x-ndjson; charset=utf-8`` is an envelope: HTTP clients add the parameter,
    and scans are UTF-8 JSON whatever it says, so only another charset is refused.
    """
    kind, *params = content_type.split(";")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise EnvelopeError(f"content-type {content_type[:60]!r}: scans are UTF-8 JSON, not {value.strip()[:20]!r}")
    return kind.strip().lower()


def encode(lines: Iterable[bytes]) -> bytes:
    """An envelope value from serialised scan events (each one JSON object, no newline)."""
    return b"\n".join(lines)


def chunks(lines: Sequence[bytes], limit: int = MAX_ENVELOPE_BYTES) -> Iterable[Sequence[bytes]]:
    """Consecutive runs of ``lines`` whose envelopes stay within ``limit`` bytes."""
    start, size = 0, 0
    for i, line in enumerate(lines):
        grown = size + len(line) + (1 if i > start else 0)
        if grown > limit and i > start:
            yield lines[start:i]
            start, grown = i, len(line)
        size = grown
    if start < len(lines):
        yield lines[start:]


def decode(value: bytes | None, content_type: str) -> list[bytes]:
    """The scan events carried by one message; ``EnvelopeError`` when it carries none."""
    if value is None:
        raise EnvelopeError("message has no value (a tombstone)")
    kind = media_type(content_type)
    if kind == ENVELOPE:
        return [line for line in value.split(b"\n") if line.strip()]
    if kind in (SINGLE, "text/plain"):
        return [value]
    raise EnvelopeError(f"content-type {content_type[:60]!r} is not {SINGLE!r} or {ENVELOPE!r}")
