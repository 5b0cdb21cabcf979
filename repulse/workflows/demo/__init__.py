"""``repulse demo``: the RePULSe toy experiment (paper §4.2, App. E.1) end to end, from nothing.

``world`` builds the toy (tokenizer, LM, reward model, exact reward table); ``sweep`` is the
experiment's design (settings, grids, the RL config of one run); ``runner`` runs the RL runs in
worker processes with progress lines; ``evaluate`` computes every final policy's numbers
exactly; ``stats`` the intervals over seeds and the claims; ``verdicts`` says them in words
(and renders the README paragraph); ``report`` writes summary.json, report.md, readme.md and the
figures; ``cli`` ties them together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repulse.workflows.demo.cli import main
from repulse.workflows.demo.sweep import METHODS

__all__ = ["METHODS", "main", "rl_config"]


def rl_config(toy: Any, lm: Path, rm: Path, out: Path, method: str, seed: int, quick: bool = False):
    """One run of the demo's design on a demo LM and RM (for tests): the no-KL setting's headline
    hyper-parameters of ``method``, ``toy.toy_prompt`` as the prompt file, output in
    ``out/runs/<method>_seed<seed>``.  η is the one recorded in the LM's world (``world.json``
    beside it), else 0."""
    from repulse.toy import demo_corpus as corpus
    from repulse.workflows.demo.sweep import rl_config as build
    from repulse.workflows.demo.sweep import settings

    record = Path(lm).parent / "world.json"
    eta = json.loads(record.read_text())["eta"] if record.is_file() else 0.0
    setting = settings(quick)["kl0"]
    hp = setting.grids[method][setting.headline[method]]
    out_dir = Path(out) / "runs" / f"{method}_seed{seed}"
    return build(
        toy.toy_prompt, Path(lm), Path(rm), out_dir, setting, method, hp, seed, eta, list(corpus.BAD_WORDS)
    )
