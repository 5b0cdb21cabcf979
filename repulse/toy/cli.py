"""``repulse toy build --out DIR [--seed N]``: build the toy assets and say where they are."""

from __future__ import annotations

import argparse


def cli_build(out: str, seed: int = 0) -> int:
    """Build (or reuse) the toy assets in ``out`` and print each path; returns the exit code."""
    from repulse.toy.assets import build_all, is_complete

    reused = is_complete(out, seed)
    assets = build_all(out, seed)
    print(f"toy assets {'already complete' if reused else 'written'} in {assets.root}")
    for name, path in assets.paths().items():
        if name != "root":
            print(f"  {name:<14} {path}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="repulse toy", description="build the tiny local assets (no network)"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="tokenizer, tiny Llama/GPT-2 models and data sets")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--seed", type=int, default=0, help="seed of the data, tokenizer and weights")
    args = parser.parse_args(argv)
    return cli_build(args.out, args.seed)
