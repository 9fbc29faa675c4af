"""The deployment configuration: one TOML file, read and validated once at start.

Every key is checked when the file is loaded, and an error names the key by its full path
(``tenants[0].keys[1].hex``) and says what was expected.  Relative paths in the file are
relative to the file itself, so a configuration works from any working directory.  Key
material is never part of a message: errors about a key describe its shape, not its value.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.keys import KEY_BYTES, KEY_ID_MAX, TENANT_MAX, KeyTable

#: Environment variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV = "SCANSTREAM_CONFIG"
#: Configuration used when neither ``--config`` nor the environment names one.
DEFAULT_CONFIG = Path("config/local.toml")


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


class Reader:
    """Typed access to one TOML table that remembers the path of every key it reads.

    ``done()`` rejects keys nobody read, so a misspelt key fails loudly instead of being
    silently ignored.
    """

    def __init__(self, table: Any, path: str, base_dir: Path):
        if not isinstance(table, dict):
            raise ConfigError(f"{path or 'configuration'}: expected a table, got {type(table).__name__}")
        self.table = table
        self.path = path
        self.base_dir = base_dir
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        """Full path of a key of this table, for messages."""
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.table

    def _get(self, name: str, default: Any, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.table:
            if required:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        return self.table[name]

    def integer(self, name: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None,
            required: bool = False) -> int:
        value = self._get(name, default, required)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{self.key(name)}: {value} out of range; expected {lo if lo is not None else '-inf'}"
                              f"..{hi if hi is not None else 'inf'}")
        return value

    def number(self, name: str, default: float | None = None, *, lo: float | None = None,
              hi: float | None = None, required: bool = False) -> float:
        value = self._get(name, default, required)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.key(name)}: expected a number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{self.key(name)}: {value} out of range; expected {lo}..{hi}")
        return float(value)

    def text(self, name: str, default: str | None = None, *, choices: tuple[str, ...] | None = None,
            required: bool = False) -> str:
        value = self._get(name, default, required)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(name)}: expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {list(choices)}")
        return value

    def flag(self, name: str, default: bool | None = None, *, required: bool = False) -> bool:
        value = self._get(name, default, required)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def path(self, name: str, default: str | None = None, *, required: bool = False) -> Path:
        """A path, resolved against the configuration file's folder."""
        value = self.text(name, default, required=required)
        return (self.base_dir / os.path.expanduser(value)).resolve()

    def texts(self, name: str, default: list[str] | None = None, *, required: bool = False) -> list[str]:
        value = self._get(name, default, required)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings, got {value!r}")
        return list(value)

    def sub(self, name: str, *, required: bool = False) -> Reader:
        """The sub-table ``name`` (an empty one when absent and not required)."""
        return Reader(self._get(name, {}, required), self.key(name), self.base_dir)

    def subs(self, name: str, *, required: bool = False) -> list[Reader]:
        """An array of tables, one reader each."""
        value = self._get(name, [], required)
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: expected an array of tables, got {type(value).__name__}")
        return [Reader(v, f"{self.key(name)}[{i}]", self.base_dir) for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.table) - self._seen)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key; expected one of {sorted(self._seen)}")


@dataclass(frozen=True)
class Tenant:
    """A brand: its id (the code's tenant field) and display name."""

    id: int
    name: str


@dataclass(frozen=True)
class Config:
    """A validated deployment configuration."""

    source: Path
    tenants: dict[int, Tenant]
    keys: KeyTable = field(repr=False)


def _read_key(r: Reader, tenant: int) -> tuple[int, bytes]:
    key_id = r.integer("key_id", required=True, lo=0, hi=KEY_ID_MAX)
    given = [name for name in ("hex", "env", "file") if r.has(name)]
    if len(given) != 1:
        raise ConfigError(f"{r.path}: give the key exactly one way, as one of hex, env or file; got {given or 'none'}")
    source = given[0]
    if source == "hex":
        text, where = r.text("hex"), r.key("hex")
    elif source == "env":
        name = r.text("env")
        if name not in os.environ:
            raise ConfigError(f"{r.key('env')}: environment variable {name!r} is not set")
        text, where = os.environ[name], f"{r.key('env')} (variable {name})"
    else:
        path = r.path("file")
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{r.key('file')}: cannot read key file {str(path)!r}: {type(exc).__name__}") from None
        where = f"{r.key('file')} ({path})"
    r.done()
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{where}: expected {2 * KEY_BYTES} hex digits; the value holds other characters") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where}: expected {2 * KEY_BYTES} hex digits ({KEY_BYTES} bytes), got {len(text)} characters")
    return key_id, key


def _read_tenants(root: Reader) -> tuple[dict[int, Tenant], KeyTable]:
    tenants: dict[int, Tenant] = {}
    keys: dict[tuple[int, int], bytes] = {}
    readers = root.subs("tenants", required=True)
    if not readers:
        raise ConfigError("tenants: at least one tenant is required")
    for r in readers:
        tid = r.integer("id", required=True, lo=0, hi=TENANT_MAX)
        if tid in tenants:
            raise ConfigError(f"{r.key('id')}: tenant {tid} is configured twice")
        tenants[tid] = Tenant(tid, r.text("name", f"tenant {tid}"))
        key_readers = r.subs("keys", required=True)
        if not key_readers:
            raise ConfigError(f"{r.key('keys')}: tenant {tid} needs at least one key")
        for kr in key_readers:
            key_id, key = _read_key(kr, tid)
            if (tid, key_id) in keys:
                raise ConfigError(f"{kr.key('key_id')}: key_id {key_id} of tenant {tid} is configured twice")
            keys[(tid, key_id)] = key
        r.done()
    return tenants, KeyTable(keys)


def parse(data: dict[str, Any], source: Path) -> Config:
    """Validate an already-parsed TOML document; ``source`` locates relative paths."""
    root = Reader(data, "", source.parent)
    tenants, keys = _read_tenants(root)
    root.done()
    return Config(source=source, tenants=tenants, keys=keys)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a configuration file.

    Without ``path``, the file named by ``$SCANSTREAM_CONFIG`` is used, else
    ``config/local.toml`` under the working directory.
    """
    chosen = Path(path) if path is not None else Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    try:
        raw = chosen.read_bytes()
    except OSError as exc:
        hint = "" if path is not None else f" (pass --config FILE or set {CONFIG_ENV})"
        raise ConfigError(f"cannot read configuration {str(chosen)!r}: {exc.strerror}{hint}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
    return parse(data, chosen.resolve())
