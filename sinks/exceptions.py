"""Errors raised by the sinks.

A sink error says which store, table and how many rows were involved, so the worker can log
it and decide (retry, pause, stop) without parsing driver messages.  Messages never carry
credentials: targets are shown with their password redacted.
"""
from __future__ import annotations


class SinkError(RuntimeError):
    """A sink could not connect, create its schema, or store or read a batch.

    ``table`` and ``rows`` are set when the failure concerns one insert, so callers can report
    what was not stored.
    """

    def __init__(self, message: str, *, table: str | None = None, rows: int | None = None):
        super().__init__(message)
        self.table = table
        self.rows = rows
