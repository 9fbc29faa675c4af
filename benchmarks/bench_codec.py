"""Throughput of code verification (DESIGN.md "Code format v1"), in codes per second.

All implementations see the same input in one run: ``--codes`` codes minted with
``ext.codec.mint`` (tenant 7, key ``00..0f``), with a ``--bad-share`` of them changed in the
last character. That character holds only MAC bits, so every changed code takes the
``bad_mac`` path, and the MAC is computed in full for every code.

Measured:

(a) ``ext.codec.verify_batch`` over a list of str: the engine's hot path.
(b) ``ext.codec.verify`` called once per code from a Python loop: the same C work plus one
    Python call, key-table unpacking and result tuple per code. The gap between (a) and (b)
    shows what batching saves.
(c) ``engine.codec.verify_batch``, the pure-Python reference, on a smaller sample (the
    first ``--ref-sample`` codes) because it is slow. Its rate is per code, so it compares
    with the others directly.
(d) A baseline: the best a plain-Python verifier could do with a hash written in C. It
    decodes the 24 characters with ``str.translate`` + ``int(s, 32)``, checks the version,
    looks up the key and compares a 5-byte keyed BLAKE2b (``hashlib``) of the 10-byte payload.
    BLAKE2b is not the format's SipHash-2-4; the Python standard library has no keyed
    SipHash, so this is a cost baseline, not a verifier of these codes. It answers "would
    plain Python plus hashlib have been fast enough?", which the pure-Python reference (c)
    cannot, since (c) spends most of its time doing 64-bit arithmetic on Python ints. On the
    SipHash-signed input every code fails its MAC comparison; the comparison costs the
    same either way, so the timing stands. The baseline does not strip URLs or ``-``;
    it covers bare codes only, which is all the input holds.

Also measured: ``ext.codec.mint`` (codes written per second), on its own line because it is
encoding rather than verification.

Each measurement: one warm-up call, then the best of ``--repeat`` calls timed with
``time.perf_counter``. The best run is the one least disturbed by other load on the
machine. The garbage collector is off during timed calls (as ``timeit`` does), because
(b) to (d) allocate many small objects and a collection landing in one run but not
another would make runs hard to compare.

Before timing, (a), (b) and (c) must give identical columns on the reference sample and the
expected ok / bad_mac split, otherwise the script exits with an error: a fast wrong
verifier is not worth timing. The two goals (batch >= 10 M codes/s on one core, >= 30x the
pure-Python reference) are printed as PASS / MISS for information and never fail the run.

Run: ``python benchmarks/bench_codec.py [--codes N] [--bad-share F] [--repeat R] [--json FILE]``
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Put this checkout first so that the in-place build of ext/ is the one measured, even
# when another copy of scanstream is installed in the environment.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from machine import machine
from scanstream.engine import codec as ref  # noqa: E402
from scanstream.engine.keys import KeyTable  # noqa: E402
from scanstream.engine.verdicts import Verdict  # noqa: E402
from scanstream.ext import codec as cy  # noqa: E402

TENANT = 7
BATCH = 42
KEY = bytes(range(16))
KEY_ID = 0
SEED = 20240601

GOAL_BATCH_RATE = 10_000_000
GOAL_VS_REFERENCE = 30.0

# DESIGN.md test vector (tenant 7, batch 42, serial 123456, key 00..0f): checks that mint
# writes format v1 before anything is timed.
VECTOR_SERIAL = 123456
VECTOR_CODE = "2000E00058003RJ08V9QZJM3"


# ---------------------------------------------------------------------------- baseline (d)

# int(s, 32) reads the digits 0-9A-V; Crockford's alphabet skips I L O U, so translate
# first. Every other character becomes '!', which int() rejects, so a bad character
# surfaces as ValueError instead of being silently read as a base-32 digit (e.g. 'U').
_TO_BASE32HEX = {i: "!" for i in range(128)}
for _i, _c in enumerate(ref.ALPHABET):
    _TO_BASE32HEX[ord(_c)] = _TO_BASE32HEX[ord(_c.lower())] = "0123456789ABCDEFGHIJKLMNOPQRSTUV"[_i]
for _c, _d in (("O", "0"), ("I", "1"), ("L", "1")):
    _TO_BASE32HEX[ord(_c)] = _TO_BASE32HEX[ord(_c.lower())] = _d
_TRANSLATE = str.maketrans(_TO_BASE32HEX)


def baseline_keys(keys: dict[tuple[int, int], bytes]) -> dict[int, bytes]:
    """Keys indexed by bits 96..113 of the code value (key_id:2, tenant:16).

    An int key read straight off the decoded value saves building a (tenant, key_id) tuple
    per code; the baseline should be the fastest plain Python, not a strawman.
    """
    return {key_id << 16 | tenant: key for (tenant, key_id), key in keys.items()}


def baseline_verify(codes: Sequence[str], keys: dict[int, bytes]) -> bytearray:
    """Verdict per bare code: decode, version, key lookup, 5-byte keyed BLAKE2b comparison."""
    malformed, unknown, bad, ok = (int(v) for v in
                                   (Verdict.MALFORMED, Verdict.UNKNOWN_TENANT, Verdict.BAD_MAC, Verdict.OK))
    out = bytearray(len(codes))
    # locals, because global and attribute lookups cost as much as the work in this loop
    blake2b, translate, get_key = hashlib.blake2b, _TRANSLATE, keys.get
    for i, code in enumerate(codes):
        if len(code) != 24:
            out[i] = malformed
            continue
        try:
            value = int(code.translate(translate), 32)
        except ValueError:
            out[i] = malformed
            continue
        if value >> 116 != 1:
            out[i] = malformed
            continue
        key = get_key(value >> 96 & 0x3FFFF)
        if key is None:
            out[i] = unknown
            continue
        payload = (value >> 40).to_bytes(10, "big")
        mac = blake2b(payload, key=key, digest_size=5).digest()
        out[i] = ok if mac == (value & 0xFFFFFFFFFF).to_bytes(5, "big") else bad
    return out


def baseline_sign(key: bytes, tenant: int, batch: int, serial: int) -> str:
    """A code with the baseline's BLAKE2b MAC, only to show that the baseline verifies."""
    payload = ref.payload_bytes(ref.KIND_UNIT, KEY_ID, tenant, batch, serial)
    mac = hashlib.blake2b(payload, key=key, digest_size=5).digest()
    value = int.from_bytes(payload + mac, "big")
    return "".join(ref.ALPHABET[value >> (5 * (23 - i)) & 31] for i in range(24))


# ---------------------------------------------------------------------------- input

def corrupt_last(code: str) -> str:
    """The code with its last character replaced by the next alphabet character."""
    return code[:-1] + ref.ALPHABET[(ref.ALPHABET.index(code[-1]) + 1) % 32]


def make_input(n: int, bad_share: float) -> tuple[list[str], np.ndarray]:
    """``n`` minted codes with ``bad_share`` of them, at random positions, corrupted."""
    codes = cy.mint(KEY, TENANT, BATCH, 0, n).decode("ascii").split("\n")[:-1]
    # random positions, not a block, so that any sample of the list has the same mix
    bad = np.zeros(n, dtype=bool)
    bad[np.random.default_rng(SEED).choice(n, size=round(n * bad_share), replace=False)] = True
    for i in np.flatnonzero(bad).tolist():
        codes[i] = corrupt_last(codes[i])
    return codes, bad


# ---------------------------------------------------------------------------- timing

def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    """Best and all wall times of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeat):
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return min(times), times


def per_code_loop(codes: Sequence[str], keys: KeyTable) -> list[ref.Decoded]:
    # the loop a caller without a batch API would write; its overhead is what (b) measures
    verify = cy.verify
    return [verify(c, keys) for c in codes]


# ---------------------------------------------------------------------------- checks

def fail(message: str) -> None:
    raise SystemExit(f"bench_codec: correctness check failed: {message}")


def check_correctness(codes: list[str], bad: np.ndarray, keys: KeyTable, sample: int) -> None:
    """(a), (b), (c) agree on the sample; the verdicts are exactly the expected ok / bad_mac."""
    if cy.mint(KEY, TENANT, BATCH, VECTOR_SERIAL, 1) != VECTOR_CODE.encode() + b"\n":
        fail(f"mint of serial {VECTOR_SERIAL} is not the DESIGN.md vector {VECTOR_CODE}")
    part = codes[:sample]
    batch = cy.verify_batch(part, keys)
    reference = ref.verify_batch(part, keys)
    for name, a, r in zip(batch._fields, batch, reference):
        if not np.array_equal(a, r):
            where = int(np.flatnonzero(a != r)[0])
            fail(f"column {name}: Cython batch {a[where]} != reference {r[where]} for {part[where]!r}")
    for i, row in enumerate(per_code_loop(part, keys)):
        if tuple(int(x) for x in row) != tuple(int(col[i]) for col in batch):
            fail(f"per-code verify {tuple(row)} != batch row for {part[i]!r}")
    expected = np.where(bad[:sample], int(Verdict.BAD_MAC), int(Verdict.OK)).astype(np.uint8)
    if not np.array_equal(batch.verdict, expected):
        fail("verdicts are not ok for minted codes and bad_mac for corrupted ones")
    full = cy.verify_batch(codes, keys).verdict
    if int((full == Verdict.BAD_MAC).sum()) != int(bad.sum()) or int((full == Verdict.OK).sum()) != len(codes) - int(bad.sum()):
        fail("full-input verdict counts differ from the corrupted share")
    # the baseline must be a working verifier, or its timing would flatter Python
    signed = [baseline_sign(KEY, TENANT, BATCH, s) for s in range(200)]
    signed[1::2] = [corrupt_last(c) for c in signed[1::2]]
    got = baseline_verify(signed, baseline_keys({(TENANT, KEY_ID): KEY}))
    if list(got) != [int(Verdict.OK), int(Verdict.BAD_MAC)] * 100:
        fail("BLAKE2b baseline does not tell BLAKE2b-signed codes from corrupted ones")


# ---------------------------------------------------------------------------- report

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--codes", type=int, default=1_000_000, help="codes in the input (default 1000000)")
    p.add_argument("--bad-share", type=float, default=0.1, help="share of codes with a corrupted last character (default 0.1)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement, best is reported (default 5)")
    p.add_argument("--ref-sample", type=int, default=20_000, help="codes for the pure-Python reference (default 20000)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    if args.codes < 1 or args.repeat < 1 or args.ref_sample < 1:
        p.error("--codes, --repeat and --ref-sample must be at least 1")
    if not 0.0 <= args.bad_share <= 1.0:
        p.error("--bad-share must be between 0 and 1")
    args.ref_sample = min(args.ref_sample, args.codes)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine("numpy")
    print(f"machine: {info['platform']}")
    print(f"cpu:     {info['cpu']}, {info['cpu_count']} CPUs ({info['cpus_usable']} usable)")
    print(f"python:  {info['python_impl']} {info['python']}, numpy {info['numpy']}")

    keys = KeyTable({(TENANT, KEY_ID): KEY})
    bkeys = baseline_keys({(TENANT, KEY_ID): KEY})
    codes, bad = make_input(args.codes, args.bad_share)
    sample = codes[:args.ref_sample]
    print(f"input:   {len(codes):,} codes, tenant {TENANT}, {int(bad.sum()):,} with a corrupted last "
          f"character ({args.bad_share:.0%}); pure-Python reference on the first {len(sample):,}; "
          f"best of {args.repeat}")
    check_correctness(codes, bad, keys, args.ref_sample)
    print("check:   Cython batch, Cython per-code and pure-Python reference agree on the sample")
    print()

    runs: list[tuple[str, str, int, Callable[[], object]]] = [
        ("cy_batch", "(a) Cython verify_batch", len(codes), lambda: cy.verify_batch(codes, keys)),
        ("cy_per_code", "(b) Cython verify per code", len(codes), lambda: per_code_loop(codes, keys)),
        ("py_reference", "(c) pure-Python reference", len(sample), lambda: ref.verify_batch(sample, keys)),
        ("blake2b_baseline", "(d) Python + hashlib BLAKE2b", len(codes), lambda: baseline_verify(codes, bkeys)),
    ]
    results: dict[str, dict[str, Any]] = {}
    for key, label, n, fn in runs:
        best, times = best_time(fn, args.repeat)
        results[key] = {"label": label, "codes": n, "best_s": best, "times_s": times, "codes_per_s": n / best}
    mint_best, mint_times = best_time(lambda: cy.mint(KEY, TENANT, BATCH, 0, args.codes), args.repeat)
    mint = {"codes": args.codes, "best_s": mint_best, "times_s": mint_times, "codes_per_s": args.codes / mint_best}

    ref_rate = results["py_reference"]["codes_per_s"]
    base_rate = results["blake2b_baseline"]["codes_per_s"]
    print(f"{'implementation':<32} {'codes/s':>14} {'vs pure Python':>15} {'vs BLAKE2b':>11}")
    for r in results.values():
        r["vs_reference"] = r["codes_per_s"] / ref_rate
        r["vs_baseline"] = r["codes_per_s"] / base_rate
        print(f"{r['label']:<32} {r['codes_per_s']:>14,.0f} {r['vs_reference']:>14.1f}x {r['vs_baseline']:>10.2f}x")
    print(f"{'Cython mint (encode)':<32} {mint['codes_per_s']:>14,.0f}")
    print()

    # verify_batch runs its loop on the calling thread only, so its rate is a one-core rate
    batch_rate = results["cy_batch"]["codes_per_s"]
    goals = {
        "batch_rate": {"target": GOAL_BATCH_RATE, "value": batch_rate, "pass": batch_rate >= GOAL_BATCH_RATE},
        "vs_reference": {"target": GOAL_VS_REFERENCE, "value": results["cy_batch"]["vs_reference"],
                         "pass": results["cy_batch"]["vs_reference"] >= GOAL_VS_REFERENCE},
    }
    g1, g2 = goals["batch_rate"], goals["vs_reference"]
    print(f"goal: Cython batch >= {GOAL_BATCH_RATE / 1e6:.0f} M codes/s per core: "
          f"{'PASS' if g1['pass'] else 'MISS'} ({g1['value'] / 1e6:.2f} M codes/s, single-threaded)")
    print(f"goal: Cython batch >= {GOAL_VS_REFERENCE:.0f}x pure Python:        "
          f"{'PASS' if g2['pass'] else 'MISS'} ({g2['value']:,.0f}x)")

    if args.json:
        doc = {
            "machine": info,
            "params": {"codes": args.codes, "bad_share": args.bad_share, "bad_codes": int(bad.sum()),
                       "repeat": args.repeat, "ref_sample": len(sample), "tenant": TENANT, "batch": BATCH},
            "results": results,
            "mint": mint,
            "goals": goals,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
