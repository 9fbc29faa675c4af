"""How the built-in dashboard labels what it draws: regions, dealers, and long names.

Names come with the rows (``queries.py`` joins them, and says why there); these functions only
choose what to show when a name is missing, and break long names into lines, because Plotly
never wraps an axis label: a long one overlaps its neighbours or pushes the plot off.
"""
from __future__ import annotations

import html
import unicodedata
from collections.abc import Sequence

#: Longest line of an axis label, in character cells (a CJK character takes two).
LABEL_LINE_CELLS = 16
#: Height of one line of axis labels, and the room a chart keeps for its axes and legend, in
#: pixels: a chart listing many categories down its side grows instead of squeezing them.
LABEL_LINE_PX = 15
CATEGORY_GAP_PX = 6
AXES_PX = 90
#: Height of a chart when its categories fit (the page's CSS, .panel .chart).
CHART_HEIGHT_PX = 232


def place_label(code: str, name: str) -> str:
    """What a region is called on the page: its Chinese name (广东省), else its code, ``unknown`` for none."""
    return name or code or "unknown"


def city_label(province_name: str, city_name: str, city: str) -> str:
    """``广东省 深圳市``; a municipality once (``北京市``), the code when the tables do not name it."""
    if not city:
        return "–"
    if not city_name:
        return f"{province_name} {city}" if province_name else city
    if not province_name or province_name == city_name:
        return city_name
    return f"{province_name} {city_name}"


def dealer_label(dealer_id: str, name: str) -> str:
    """A dealer's name from the registry, else its id; ``(no dealer)`` when the goods were not shipped to one."""
    return name or dealer_id or "(no dealer)"


def _cells(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def wrap_label(text: str, cells: int = LABEL_LINE_CELLS) -> str:
    """``text`` in lines of at most ``cells`` character cells, joined by ``<br>`` (Plotly's line break).

    Lines break at spaces, and between any two wide (CJK) characters, since Chinese has no
    spaces; a word longer than a line stays whole rather than being cut.  ``<``, ``>`` and ``&``
    of a name are escaped: Plotly reads a label as a little HTML.
    """
    words: list[str] = []  # a word: a run of narrow characters, or one wide character
    glue: list[str] = []  # what goes before each word when it stays on the line: " " or ""
    pending_space = False
    for char in text:
        if char.isspace():
            pending_space = True
            continue
        wide = _cells(char) == 2
        if words and not wide and not pending_space and _cells(words[-1][-1]) == 1:
            words[-1] += char
        else:
            glue.append(" " if pending_space and words else "")
            words.append(char)
        pending_space = False
    lines: list[str] = []
    line, width = "", 0
    for word, sep in zip(words, glue):
        size = sum(_cells(c) for c in word)
        if line and width + len(sep) + size > cells:
            lines.append(line)
            line, width = word, size
        else:
            line, width = line + sep + word, width + len(sep) + size
    if line:
        lines.append(line)
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def fit_height(labels: Sequence[str]) -> int | None:
    """A chart height (px) that gives every category label down its side its lines; None when the default fits."""
    needed = AXES_PX + sum(LABEL_LINE_PX * (label.count("<br>") + 1) + CATEGORY_GAP_PX for label in labels)
    return needed if needed > CHART_HEIGHT_PX else None
