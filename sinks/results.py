"""``--results FILE``: the local driver's outcomes as JSON lines, one ``Sink`` among the others.

The commit protocol (``streams.checkpoint``) stores each batch in the outcome tables first and
then here, so no line in this file names an outcome that ClickHouse does not hold.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from scanstream.engine.outcomes import outcome_lines
from scanstream.engine.pipeline import BatchResult


#: Suffix of the file a results file is written to until its run has stored everything.
PARTIAL_SUFFIX = ".partial"


class ResultsFile:
    """``--results FILE``: one JSON object per input event, in input order.

    Lines go to ``FILE.partial`` beside it; ``finish`` moves that into place in one rename, so
    an existing ``FILE`` is never destroyed before a run has stored everything, and a crashed
    run leaves no half file under the real name.  ``sync`` makes what was written durable and
    returns its length: the local driver keeps that length in its checkpoint, and a resumed
    run cuts the partial file back to it (``resume_at``), so the file always holds exactly the
    outcomes that the state has stored.
    """

    def __init__(self, path: Path | str, resume_at: int | None = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        if resume_at is None:
            self._fh: IO[bytes] = self.partial.open("wb")
        else:
            self._fh = self.partial.open("r+b")
            self._fh.truncate(resume_at)
            self._fh.seek(resume_at)
        self.length = resume_at or 0  # bytes durable in the partial file

    def store(self, result: BatchResult, token: str) -> None:
        """The ``Sink``: the batch's lines appended and fsynced (``length`` grows to cover them).
        ``token`` is not needed: a resumed run cuts the file back to its checkpoint first."""
        lines = outcome_lines(result.scans)
        if lines:
            self._fh.write(b"\n".join(lines) + b"\n")
        self.sync()

    def sync(self) -> int:
        """Flush and fsync what was written; its length in bytes."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.length = self._fh.tell()
        return self.length

    def finish(self) -> None:
        """Close and move the partial file into place (the run stored everything)."""
        self.sync()
        self._fh.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        """Close without moving the file into place (a run that stopped early)."""
        if not self._fh.closed:
            self._fh.close()
