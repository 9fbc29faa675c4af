"""The local driver: scans from a file, stdin or a generator through the pipeline, no Kafka.

Reads JSON lines in batches of ``engine.batch_size``, runs each batch through the pipeline and
hands the outcomes to the outputs before reading on.  Blank lines are skipped (they are not
events); every other line gets exactly one outcome, in input order.
"""
from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import BinaryIO

import numpy as np

from scanstream.engine.errors import PermanentError
from scanstream.engine.pipeline import Pipeline
from scanstream.engine.summary import Summary
from scanstream.sinks.base import Sink
from scanstream.sinks.results import ResultsFile
from scanstream.streams.checkpoint import Checkpoint, InFlight

#: Redraw the progress line at most this often.
PROGRESS_EVERY_S = 0.2


#: A UTF-8 byte order mark, which some editors put at the start of a text file.
BOM = b"\xef\xbb\xbf"


def read_lines(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each non-blank line, newline removed (and a leading BOM)."""
    for number, line in enumerate(source, start=1):
        if number == 1 and line.startswith(BOM):
            line = line[len(BOM):]
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield number, line


def batches(lines: Iterable[tuple[int, bytes]], size: int) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """Groups of at most ``size`` lines, with their line numbers."""
    numbers: list[int] = []
    chunk: list[bytes] = []
    for number, line in lines:
        numbers.append(number)
        chunk.append(line)
        if len(chunk) == size:
            yield np.array(numbers, np.int64), chunk
            numbers, chunk = [], []
    if chunk:
        yield np.array(numbers, np.int64), chunk


class Progress:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, total: int | None = None, stream=sys.stderr):
        self.total = total
        self.stream = stream
        self.enabled = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self._last < PROGRESS_EVERY_S):
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            width = 30
            filled = int(width * done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r[{bar}] {done:,}/{self.total:,} scans  {rate:,.0f}/s"
        else:
            text = f"\r{done:,} scans  {rate:,.0f}/s"
        self.stream.write(text + ("\n" if final else ""))
        self.stream.flush()


class InputChanged(PermanentError):
    """A run was to resume over an input that is not the one its checkpoint was made on (permanent)."""


@dataclass
class Cursor:
    """Where a run over one input stands, kept in the state's checkpoint under ``"run"``.

    ``lines`` is the number of the last input line whose outcome is stored everywhere and
    ``digest`` hashes the events up to it, so a rerun can tell that it reads the same input
    before it skips them.  ``results_bytes`` is the length of the results file that holds
    exactly those outcomes.  ``finished``: every line is done (only the results file's move
    into place may be missing).
    """

    input: str
    results: str | None = None
    lines: int = 0
    digest: str = ""
    results_bytes: int = 0
    finished: bool = False

    @classmethod
    def of(cls, value: dict | None) -> Cursor | None:
        return None if value is None else cls(**value)


def covers(source: BinaryIO, cursor: Cursor) -> bool:
    """True when ``source`` holds exactly the events ``cursor`` says were done (no more after)."""
    hasher = _hasher()
    last = 0
    for number, line in read_lines(source):
        if last == cursor.lines:  # a line past the last one done
            return False
        hasher.update(line + b"\n")
        last = number
    return last == cursor.lines and hasher.hexdigest() == cursor.digest


def _hasher():
    return hashlib.blake2b(digest_size=16)


def run(pipeline: Pipeline, source: BinaryIO, batch_size: int, source_name: str = "input",
        progress: Progress | None = None, *, sinks: Sequence[Sink] = (), outbox=None,
        results: ResultsFile | None = None, cursor: Cursor | None = None) -> Summary:
    """Run every line of ``source`` through ``pipeline``; returns the totals.

    Each batch becomes done through ``streams.checkpoint.Checkpoint``: the pipeline, then
    ``sinks`` in order (the outcome tables, then ``results``), the alerts to ``outbox``, and as the
    commit, ``state.checkpoint`` with the ``Cursor`` that says this batch is done (the line it
    reached, the digest of the lines so far, the results file's durable length).

    A crash before the commit leaves the state as it was before the batch: a rerun with the same
    ``cursor`` skips the lines done, cuts the results file back to the checkpoint's length, and
    redoes the batch to the same outcomes (ClickHouse drops the repeated inserts by their token).
    ``cursor`` given: resume after its ``lines``; ``InputChanged`` when the input's first lines
    are not the ones it was made on.
    """
    state = pipeline.state
    summary = Summary()
    here = cursor or Cursor(input=source_name)
    hasher = _hasher()
    lines = read_lines(source)
    if here.lines:
        for number, line in lines:
            hasher.update(line + b"\n")
            if number == here.lines:
                break
        else:
            raise InputChanged(f"input {source_name!r} has fewer lines than the {here.lines:,} that the interrupted "
                               f"run over it had done")
        if hasher.hexdigest() != here.digest:
            raise InputChanged(f"input {source_name!r} is not the one the interrupted run had read: its first "
                               f"{here.lines:,} lines differ")

    def commit(batch: InFlight) -> None:
        numbers, joined = batch.source
        hasher.update(joined)
        here.lines, here.digest = int(numbers[-1]), hasher.hexdigest()
        here.results_bytes = results.length if results is not None else 0
        state.checkpoint(run=asdict(here))

    checkpoint = Checkpoint(pipeline, [*sinks, *([results] if results is not None else [])], outbox, commit=commit)
    done = 0
    for numbers, chunk in batches(lines, batch_size):
        positions = np.char.add(f"{source_name}:", numbers.astype(str)).astype(object)
        joined = b"\n".join(chunk) + b"\n"
        # the same lines give the same token (a re-sent batch is dropped), other lines another
        content = hashlib.blake2b(joined, digest_size=8).hexdigest()
        batch = checkpoint.run(f"{source_name}:{numbers[0]}-{numbers[-1]}:{content}", chunk, positions,
                               (numbers, joined))
        summary.add(batch.result)
        done += len(chunk)
        if progress is not None:
            progress.update(done)
    here.finished = True
    state.checkpoint(run=asdict(here))
    if progress is not None:
        progress.update(done, final=True)
    return summary
