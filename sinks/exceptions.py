"""Errors raised by the sinks.

A sink error says which store, table and how many rows were involved, and whether retrying can
cure it (``transient``, decided where it is raised: see ``engine.errors``), so the worker can
retry or stop without parsing driver messages.  Messages never carry
credentials: targets are shown with their password redacted.
"""
from __future__ import annotations


class SinkError(RuntimeError):
    """A sink could not connect, create its schema, or store or read a batch.

    ``table`` and ``rows`` are set when the failure concerns one insert, so callers can report
    what was not stored.  ``transient``: a retry of the same step can succeed (the server is
    unreachable, overloaded, out of disk); False for a rejected statement, a schema that differs
    from the contract or a value that does not fit, which no retry cures.
    """

    def __init__(self, message: str, *, table: str | None = None, rows: int | None = None,
                 transient: bool = False):
        super().__init__(message)
        self.table = table
        self.rows = rows
        self.transient = transient
