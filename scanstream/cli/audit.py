"""``scanstream audit``: re-derive the lottery draw of codes, for anyone holding the config."""
from __future__ import annotations

import argparse

import numpy as np

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config
from scanstream.engine.codec import KIND_NAMES
from scanstream.engine.config import ConfigError
from scanstream.engine.lottery import draw_numbers, draw_tiers
from scanstream.engine.verdicts import Verdict
from scanstream.ext import codec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", parents=[config_option()], help="show the tier each code draws in a campaign")
    p.add_argument("--campaign", required=True, help="campaign id from the configuration")
    p.add_argument("codes", nargs="+", metavar="CODE")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    config = load_config(args)
    campaign = next((c for c in config.campaigns if c.id == args.campaign), None)
    if campaign is None:
        raise ConfigError(f"campaigns: no campaign {args.campaign!r}; configured: {[c.id for c in config.campaigns]}")
    v = codec.verify_batch(args.codes, config.keys)
    numbers = draw_numbers(campaign, v.tenant, v.kind, v.batch, v.serial)
    tiers = draw_tiers(campaign, numbers)
    cumulative = np.concatenate([[0.0], campaign.cumulative()])
    print(f"campaign {campaign.id} (tenant {campaign.tenant}); tiers by cumulative probability: " + ", ".join(
        f"{t.name} [{lo:.6f}, {hi:.6f})" for t, lo, hi in zip(campaign.tiers, cumulative[:-1], cumulative[1:])))
    status = exits.OK
    for i, text in enumerate(args.codes):
        verdict = Verdict(int(v.verdict[i]))
        if verdict is not Verdict.OK:
            print(f"{text}  {verdict.label}: no draw")
            status = exits.CHECK_FAILED  # a code that cannot be drawn: like `codes verify`
            continue
        ident = (f"tenant={v.tenant[i]} {KIND_NAMES.get(int(v.kind[i]), v.kind[i])} batch={v.batch[i]} "
                 f"serial={v.serial[i]}")
        if int(v.tenant[i]) != campaign.tenant:
            print(f"{text}  {ident}  not a code of this campaign's tenant: no draw")
            status = exits.CHECK_FAILED
            continue
        t = int(tiers[i])
        drawn = f"tier {campaign.tiers[t].name} ({campaign.tiers[t].cents / 100:.2f} yuan)" if t >= 0 else "no prize"
        print(f"{text}  {ident}  draw={numbers[i]:.9f}  {drawn}")
    return status
