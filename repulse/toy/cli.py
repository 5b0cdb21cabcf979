"""``repulse toy build --out DIR``."""

from __future__ import annotations

import argparse
from dataclasses import fields


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="repulse toy", description="build the tiny local assets")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="tokenizer, tiny Llama/GPT-2, data sets")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from repulse.toy import build_all

    assets = build_all(args.out, args.seed)
    for f in fields(assets):
        print(f"{f.name:<14} {getattr(assets, f.name)}")
    return 0
