"""Verdict codes, in the order DESIGN.md checks them.

A scan's verdict is the first check that applies, so each stage only ever lowers the
number: the smaller code wins.  Stages combine with ``numpy.minimum`` and never need to
know which stage ran before them.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Verdict(IntEnum):
    """A scan's verdict; the value is the position in DESIGN.md's check order."""

    INVALID_EVENT = 1
    CONFLICT = 2  # the scan_id came before with another event: nothing is claimed or paid
    MALFORMED = 3
    UNKNOWN_TENANT = 4
    BAD_MAC = 5
    UNKNOWN_BATCH = 6
    NOT_ACTIVATED = 7
    REPEAT = 8
    OK = 9

    @property
    def label(self) -> str:
        """The verdict as it appears in outputs (``bad_mac``, ``ok`` ...)."""
        return self.name.lower()


#: Label per code, indexable by a verdict array: ``LABELS[verdicts]``.
LABELS = np.array([""] + [v.label for v in Verdict], dtype=object)

#: dtype of every verdict column.
VERDICT_DTYPE = np.uint8


def label_of(code: int) -> str:
    """The output label of a verdict code; ``ValueError`` names the code when unknown."""
    try:
        return Verdict(int(code)).label
    except ValueError:
        raise ValueError(f"unknown verdict code {code!r}; expected one of {[int(v) for v in Verdict]}") from None


def from_label(label: str) -> Verdict:
    """The verdict for an output label such as ``"bad_mac"``."""
    try:
        return Verdict[label.upper()]
    except KeyError:
        raise ValueError(f"unknown verdict {label!r}; expected one of {[v.label for v in Verdict]}") from None
