"""``scanstream init``: a working folder for an installed scanstream (its configuration, from the
templates that ship in the package)."""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from scanstream.cli import exits
from scanstream.engine.config import DEFAULT_CONFIG

TEMPLATES = ("local", "production")


def register(sub: argparse._SubParsersAction) -> None:
    init = sub.add_parser("init", help="write config/local.toml (or production.toml) into a folder, ready for `demo`")
    init.add_argument("dir", nargs="?", default=".", help="the working folder (default: the current one)")
    init.add_argument("--template", choices=TEMPLATES, default="local",
                      help="local: embedded state and ClickHouse; production: Kafka, Redis, a ClickHouse server")
    init.add_argument("--force", action="store_true", help="overwrite a configuration that is already there")
    init.set_defaults(handler=run_init)


def template_text(name: str) -> str:
    """The configuration template ``name`` as shipped in the installed package."""
    return resources.files("scanstream.config").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def run_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    # local.toml is the file the CLI reads by default; a production template keeps its own name so
    # that it is chosen on purpose (--config or $SCANSTREAM_CONFIG)
    target = folder / (DEFAULT_CONFIG if args.template == "local" else DEFAULT_CONFIG.with_name("production.toml"))
    if target.exists() and not args.force:
        print(f"scanstream: {target} exists; keep it, or pass --force to replace it with the template",
              file=sys.stderr)
        return exits.USAGE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(template_text(args.template), encoding="utf-8")
    print(f"wrote {target}")
    if args.template == "local":
        where = "" if folder.resolve() == Path.cwd().resolve() else f"cd {folder} && "
        print(f"next: {where}scanstream demo   (data goes to {(folder / 'data').resolve()})")
    else:
        print(f"next: edit it (brokers, Redis, ClickHouse, keys), then scanstream --config {target} worker")
    return exits.OK
