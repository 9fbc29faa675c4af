"""Process the first N batches of a saved scan stream, nothing else: the unit to count instructions of.

Wall-clock ratios on this shared 2-core machine move by 20 % between runs, so two versions of the
engine are compared by the instructions they execute on the same input (``valgrind
--tool=callgrind``, repeatable whatever else the machine does).  The difference between a run of
``--batches 10`` and one of ``--batches 1`` is the instructions of nine batches, without start-up
(imports, registry, the first batch's warm-up).

    python benchmarks/process_batches.py --save DIR            # the demo world's stream and registry
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/process_batches.py --load DIR --batches 1    # "Collected : <instructions>"
    valgrind ... --batches 10

Run the second and third commands with each version's interpreter (a ``git worktree`` of the
older commit with its own venv; this file is run by path, so the older checkout need not have it)
on the same DIR: both engines read the same lines, registry and configuration; ``--save`` with the
older interpreter and ``--config`` its config/local.toml makes the older engine's input.  Memory state store, no sink, batches of 5 000 scans.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import replace
from pathlib import Path

from scanstream.engine.config import load
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.wiring import build_pipeline

ROOT = Path(__file__).resolve().parent.parent

#: The demo world's tenant, as ``scanstream demo`` uses it.
DEMO_TENANT = 7
BATCH = 5_000
SCANS = 50_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--save", type=Path, help="write the demo world's registry, stream and config to this folder")
    p.add_argument("--load", type=Path, help="process the stream saved in this folder")
    p.add_argument("--batches", type=int, default=10, help="batches of 5 000 scans to process (default 10)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "local.toml",
                   help="configuration to save with the stream (default config/local.toml)")
    args = p.parse_args()
    if args.save:
        from scanstream.streams.synthetic import build_world, generate_scans
        config = load(args.config)
        key_id = max(k for t, k in config.keys.pairs() if t == DEMO_TENANT)
        world = build_world(DEMO_TENANT, config.keys.get(DEMO_TENANT, key_id), key_id)
        world.write_registry(args.save / "registry")
        (args.save / "scanstream.toml").write_bytes(args.config.read_bytes())
        (args.save / "lines.pkl").write_bytes(pickle.dumps(generate_scans(world, SCANS, seed=7)[:SCANS]))
        return 0
    if not args.load:
        p.error("give --save DIR or --load DIR")
    lines = pickle.loads((args.load / "lines.pkl").read_bytes())
    if args.batches * BATCH > len(lines):
        p.error(f"--batches {args.batches}: the stream holds {len(lines) // BATCH} batches of {BATCH}")
    config = replace(load(args.load / "scanstream.toml"), registry_dir=args.load / "registry", clickhouse="")
    pipeline = build_pipeline(config, state=MemoryStateStore())
    for start in range(0, args.batches * BATCH, BATCH):
        pipeline.process(lines[start:start + BATCH])
    return 0


if __name__ == "__main__":
    sys.exit(main())
