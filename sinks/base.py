"""The one interface every output that makes a batch durable implements.

The commit protocol (``streams.checkpoint.Checkpoint``) calls ``store`` on each sink of a batch,
in the order the driver gave them, before it hands the alerts over, produces messages or
commits the input position.  A sink must be idempotent under its token: storing the same batch
again with the same token leaves what a reader sees as it was (ClickHouse drops the repeated
insert by its deduplication token; the results file is cut back to its last checkpoint first).
Errors say whether a retry can cure them (``engine.errors``).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from scanstream.engine.pipeline import BatchResult


@runtime_checkable
class Sink(Protocol):
    """Stores the outcomes of one batch, durably, before the batch may be committed."""

    def store(self, result: BatchResult, token: str) -> None:
        """Make ``result`` durable; ``token`` names the batch (the same input gives the same token)."""
