"""The local driver: scans from a file, stdin or a generator through the pipeline, no Kafka.

Reads JSON lines in batches of ``engine.batch_size``, runs each batch through the pipeline and
hands the outcomes to the outputs before reading on.  Blank lines are skipped (they are not
events); every other line gets exactly one outcome, in input order.
"""
from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

from engine.pipeline import Pipeline
from engine.summary import Summary
from sinks.outputs import Outputs

#: Redraw the progress line at most this often.
PROGRESS_EVERY_S = 0.2


def read_lines(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each non-blank line, newline removed."""
    for number, line in enumerate(source, start=1):
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


def run(pipeline: Pipeline, source: BinaryIO, outputs: Outputs, batch_size: int, source_name: str = "input",
        progress: Progress | None = None) -> Summary:
    """Run every line of ``source`` through ``pipeline`` into ``outputs``; returns the totals."""
    summary = Summary()
    done = 0
    for numbers, chunk in batches(read_lines(source), batch_size):
        positions = np.char.add(f"{source_name}:", numbers.astype(str)).astype(object)
        result = pipeline.process(chunk, positions=positions)
        # the same lines give the same token (a re-sent batch is dropped), other lines another
        content = hashlib.blake2b(b"\n".join(chunk), digest_size=8).hexdigest()
        outputs.write(result, token=f"{source_name}:{numbers[0]}-{numbers[-1]}:{content}")
        summary.add(result)
        done += len(chunk)
        if progress is not None:
            progress.update(done)
    if progress is not None:
        progress.update(done, final=True)
    return summary
