"""``scanstream codes mint``, ``scanstream codes verify`` and ``codes activate`` (``cli/activate.py``)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO, TextIO

import orjson

from scanstream.cli import activate, exits
from scanstream.engine import config as config_mod
from scanstream.cli.common import config_option, load_config
from scanstream.engine.codec import KIND_CASE, KIND_NAMES, KIND_UNIT, SERIAL_MAX
from scanstream.engine.verdicts import Verdict
from scanstream.ext import codec
from scanstream.streams.local import PROGRESS_EVERY_S

#: Codes minted per block: large enough to amortise the call, small enough to bound memory.
MINT_BLOCK = 1 << 20
#: Codes verified per block: the per-call overhead vanishes well below this, and the progress
#: line moves every few hundredths of a second at the rate of a large file.
VERIFY_BLOCK = 1 << 16
#: The rate of a block done "instantly" divides by this rather than by zero.
MIN_ELAPSED_S = 1e-9
KINDS = {"unit": KIND_UNIT, "case": KIND_CASE}


def register(sub: argparse._SubParsersAction) -> None:
    codes = sub.add_parser("codes", help="mint, verify and activate codes").add_subparsers(dest="codes_command",
                                                                                 required=True, metavar="ACTION")
    mint = codes.add_parser("mint", parents=[config_option()], help="write codes (or QR URLs) one per line")
    mint.add_argument("--tenant", type=int, required=True)
    mint.add_argument("--batch", type=int, required=True)
    mint.add_argument("--count", type=int, required=True)
    mint.add_argument("--start", type=int, default=0, help="first serial (default 0)")
    mint.add_argument("--kind", choices=sorted(KINDS), default="unit")
    mint.add_argument("--key-id", type=int, default=None,
                      help="which of the tenant's keys signs (default: the highest configured)")
    mint.add_argument("--url-prefix", default="", help="write URLs: PREFIX + code, e.g. https://q.example.cn/c/")
    mint.add_argument("--out", metavar="FILE", help="output file (default: standard output)")
    mint.set_defaults(handler=run_mint)

    verify = codes.add_parser("verify", parents=[config_option()], help="print each code's verdict and fields")
    verify.add_argument("codes", nargs="*", metavar="CODE", help="codes or QR URLs (default: one per line on stdin)")
    verify.add_argument("--json", action="store_true", help="one JSON object per code")
    verify.add_argument("--progress", action="store_true",
                        help="show codes done and the rate on stderr even when it is not a terminal "
                             "(on a terminal it is shown anyway)")
    verify.set_defaults(handler=run_verify)
    activate.add_parser(codes)


def _choose_key_id(cfg: config_mod.Config, tenant: int, key_id: int | None) -> int:
    configured = [k for t, k in cfg.keys.pairs() if t == tenant]
    if not configured:
        raise config_mod.ConfigError(f"tenants: no key is configured for tenant {tenant}; configured tenants: "
                                     f"{cfg.keys.tenants()}")
    if key_id is None:
        return max(configured)  # the newest key signs new codes; older ones still verify
    if key_id not in configured:
        raise config_mod.ConfigError(f"tenants: tenant {tenant} has no key_id {key_id}; configured: {configured}")
    return key_id


def mint_to(out: BinaryIO, key: bytes, tenant: int, batch: int, start: int, count: int, kind: int, key_id: int,
            url_prefix: str = "") -> None:
    """Write ``count`` codes from serial ``start`` to ``out``, one per line, in bounded blocks."""
    prefix = url_prefix.encode("utf-8")
    done = 0
    while done < count:
        n = min(MINT_BLOCK, count - done)
        out.write(codec.mint(key, tenant, batch, start + done, n, kind=kind, key_id=key_id, prefix=prefix))
        done += n


def _why(exc: OSError, out: str) -> str:
    """What went wrong writing ``out``, in words: a missing folder is named."""
    folder = os.path.dirname(out) or "."
    if isinstance(exc, FileNotFoundError) and not os.path.isdir(folder):
        return f"folder {folder!r} does not exist"
    return exc.strerror or str(exc)


def run_mint(args: argparse.Namespace) -> int:
    if args.count < 0:
        print(f"scanstream: --count {args.count} must not be negative", file=sys.stderr)
        return exits.USAGE
    if not 0 <= args.start or args.start + args.count - 1 > SERIAL_MAX:
        print(f"scanstream: serials {args.start}..{args.start + args.count - 1} must lie in 0..{SERIAL_MAX}",
              file=sys.stderr)
        return exits.USAGE
    cfg = load_config(args)
    key_id = _choose_key_id(cfg, args.tenant, args.key_id)
    key = cfg.keys.get(args.tenant, key_id)
    assert key is not None
    try:
        if args.out:
            try:
                with open(args.out, "wb") as out:
                    mint_to(out, key, args.tenant, args.batch, args.start, args.count, KINDS[args.kind], key_id,
                            args.url_prefix)
            except BrokenPipeError:  # --out naming a pipe whose reader left: as on standard output
                raise
            except OSError as exc:  # no such folder, a folder, no permission, disk full
                print(f"scanstream: cannot write --out {args.out!r}: {_why(exc, args.out)}", file=sys.stderr)
                return exits.IO_ERROR
        else:
            mint_to(sys.stdout.buffer, key, args.tenant, args.batch, args.start, args.count, KINDS[args.kind],
                    key_id, args.url_prefix)
            sys.stdout.buffer.flush()
    except ValueError as exc:  # a field out of range: the codec names it
        print(f"scanstream: {exc}", file=sys.stderr)
        return exits.USAGE
    return exits.OK


class VerifyProgress:
    """``codes verify``'s progress on stderr: codes done and the rate, on one line rewritten in place.

    On only when ``enabled`` (a terminal, or ``--progress``), so pipes, logs and tests stay clean;
    drawn at most every ``PROGRESS_EVERY_S`` seconds, so 10 M codes cost a few hundred writes.
    """

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.started = time.perf_counter()
        self._drawn = float("-inf")  # the first update draws at once

    def update(self, done: int, final: bool = False) -> None:
        """Show ``done`` codes; ``final`` draws regardless of the interval and ends the line."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self._drawn < PROGRESS_EVERY_S:
            return
        self._drawn = now
        rate = done / max(now - self.started, MIN_ELAPSED_S)
        # \r rewrites the line on a terminal; trailing spaces wipe a longer previous text
        self.stream.write(f"\r{done:,} codes verified  {rate:,.0f} codes/s  " + ("\n" if final else ""))
        self.stream.flush()


def _blocks(args: argparse.Namespace) -> Iterator[list[str]]:
    """The codes to verify in blocks of at most ``VERIFY_BLOCK``: the arguments, else stdin's lines."""
    if args.codes:
        for first in range(0, len(args.codes), VERIFY_BLOCK):
            yield args.codes[first:first + VERIFY_BLOCK]
        return
    block: list[str] = []
    for line in sys.stdin:
        block.append(line.rstrip("\r\n"))
        if len(block) == VERIFY_BLOCK:
            yield block
            block = []
    if block:
        yield block


def run_verify(args: argparse.Namespace) -> int:
    """Print each code's verdict; ``exits.CHECK_FAILED`` when any code is not ``ok``.

    Verified block by block, so memory stays bounded however long the input, and the progress
    line (``--progress``, or a terminal on stderr) moves while a large file is read.
    """
    cfg = load_config(args)
    progress = VerifyProgress(sys.stderr, args.progress or sys.stderr.isatty())
    done = failed = 0
    for inputs in _blocks(args):
        failed += _verify_block(inputs, cfg, args.json)
        done += len(inputs)
        progress.update(done)
    progress.update(done, final=True)
    return exits.CHECK_FAILED if failed else exits.OK


def _verify_block(inputs: list[str], cfg: config_mod.Config, as_json: bool) -> int:
    """Verify and print one block of codes; returns how many are not ``ok``."""
    result = codec.verify_batch(inputs, cfg.keys)
    failed = 0
    for i, text in enumerate(inputs):
        verdict = Verdict(int(result.verdict[i]))
        failed += verdict is not Verdict.OK
        row = {"code": text, "verdict": verdict.label}
        if verdict is not Verdict.MALFORMED:
            row.update(kind=KIND_NAMES.get(int(result.kind[i]), int(result.kind[i])),
                       key_id=int(result.key_id[i]), tenant=int(result.tenant[i]),
                       batch=int(result.batch[i]), serial=int(result.serial[i]))
        if as_json:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        else:
            fields = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("code", "verdict"))
            print(f"{text}  {verdict.label}  {fields}".rstrip())
    return failed
