"""Configuration files written by programs: a worker's configuration made from a base file.

Tests, benchmarks and the fault harness start real ``scanstream worker`` processes on brokers,
Redis prefixes and chdb folders of their own; they all derive that file here, so one change
to the configuration's shape is made in one place.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

#: Lines of the base file that a worker's configuration replaces: (what, pattern).
_REPLACED = (("registry dir", r'(?m)^dir = "[^"]*"'), ("sink", r'(?m)^clickhouse = "[^"]*"'),
             ("webhooks", r'(?m)^webhooks = (true|false)'), ("state backend", r'(?m)^backend = "[^"]*"'))


def toml_table(name: str, values: dict[str, Any]) -> str:
    """``[name]`` with one ``key = value`` line per entry (str, int, float, bool)."""
    lines = [f"[{name}]"]
    for key, value in values.items():
        if not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"[{name}] {key}: expected str, int, float or bool, got {type(value).__name__}")
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def worker_toml(base: str, *, registry: Path, chdb: Path, state: str, redis: dict[str, Any],
                kafka: dict[str, Any]) -> str:
    """``base`` (the text of a configuration such as ``config/local.toml``, without ``[redis]``
    or ``[kafka]`` tables) with the registry folder, a chdb sink, webhooks off, the state
    backend, and the ``[redis]`` and ``[kafka]`` tables given.  Webhooks on loopback addresses
    are allowed (``alerts.allow_loopback``): test receivers listen on 127.0.0.1."""
    for section in ("redis", "kafka"):
        if re.search(rf"(?m)^\[{section}\]", base):
            raise ValueError(f"base configuration has a [{section}] table; expected one without (it is written here)")
    text = base
    values = (f"dir = {json.dumps(str(registry))}", f"clickhouse = {json.dumps('chdb:' + str(chdb))}",
              "webhooks = false", f"backend = {json.dumps(state)}")
    for (what, pattern), line in zip(_REPLACED, values):
        text, n = re.subn(pattern, line.replace("\\", "\\\\"), text)
        if n != 1:
            raise ValueError(f"base configuration: expected one line matching {pattern!r} ({what}), found {n}")
    text = re.sub(r'(?m)^allow_loopback = (true|false).*\n?', "", text)
    text = re.sub(r'(?m)^(webhooks = false\b.*)$', "\\1\nallow_loopback = true", text, count=1)
    return text + "\n" + toml_table("redis", redis) + "\n" + toml_table("kafka", kafka)
