"""``repulse prm``: a process reward model in the Math-Shepherd form (spec §3.17).

The PRM is a causal LM. Each reasoning step of an input ends with the placeholder token
(``--model.placeholder_token``, e.g. ``ки``). At a placeholder position only, the LM's
next-token logits are restricted to the two reward tokens (``--model.reward_tokens``, e.g.
``+`` ``-``; default ``+ -``) and trained with cross-entropy:

    hard label (a reward token):  ℓ = −log softmax(z_+, z_−)[label]
    soft label p (P(step good)):  ℓ = −p·log softmax(z_+, z_−)[0] − (1−p)·log softmax(z_+, z_−)[1]

The loss of a step is Σℓ / (number of labelled steps in the global batch): token-level
units, so every step weighs the same whatever the split into micro-batches and processes.

**Score of a step** (what the trained PRM means): softmax(z_+, z_−)[0] at the step's
placeholder position, i.e. P(next token = "+" | the solution up to this step), normalised
over the two reward tokens only. The saved directory is a plain causal LM
(``AutoModelForCausalLM``); read a step's score from its logits at the placeholder positions.

Logged: loss, acc (argmax over the two reward tokens = the label; a soft label p counts as
"+" when p ≥ ½), steps (labelled steps per micro-batch); ``eval_*`` on ``--eval.dataset``.
"""

from __future__ import annotations

from typing import Any

import torch

from repulse.config import parse_config
from repulse.config.sections import OfflineConfig
from repulse.errors import UserError
from repulse.run.dirs import releases_output_dirs
from repulse.trainers.dpo import require_model, to_device, train_eval_sets
from repulse.trainers.fit import MicroResult

DEFAULT_REWARD_TOKENS = ["+", "-"]


def validate(cfg: OfflineConfig) -> None:
    require_model(cfg, "the causal LM to train as a process reward model")
    m = cfg.model
    if not m.placeholder_token:
        raise UserError(
            "--model.placeholder_token is required for PRM training: the token that ends each step, "
            "e.g. --model.placeholder_token 'ки'."
        )
    tokens = m.reward_tokens or DEFAULT_REWARD_TOKENS
    if len(tokens) != 2 or tokens[0] == tokens[1]:
        raise UserError(
            f"--model.reward_tokens takes two different tokens (good, bad), e.g. '+' '-'; got {tokens}."
        )
    if m.placeholder_token in tokens:
        raise UserError(
            f"--model.placeholder_token {m.placeholder_token!r} must differ from --model.reward_tokens {tokens}."
        )


def step_logits(model: torch.nn.Module, batch: dict, reward_ids: torch.Tensor) -> torch.Tensor:
    """Logits over the reward tokens at every placeholder position of the batch, ``[N, 2]``."""
    from repulse.models.positions import positions_from_mask

    pos = batch.get("position_ids")
    attn = batch.get("attention_mask")
    if pos is None and attn is not None:
        pos = positions_from_mask(attn)
    out = model(input_ids=batch["input_ids"], attention_mask=attn, position_ids=pos, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[batch["step_mask"]].index_select(-1, reward_ids)


class PRMMethod:
    """Cross-entropy over the reward tokens at the step placeholders; units = labelled steps."""

    def __init__(self, engine: Any, reward_token_ids: list[int], aux: Any = None):
        self.engine = engine
        self.aux = aux  # RouterAuxLoss of an MoE model (--model.aux_loss_coef), or None
        self.reward_ids = torch.tensor(reward_token_ids, dtype=torch.long, device=engine.device)

    def units(self, batch: dict) -> float:
        from repulse.losses.prm import prm_valid

        return float(prm_valid(batch["step_labels"][batch["step_mask"]]).sum())

    def loss(self, batch: dict) -> MicroResult:
        from repulse.losses.prm import prm_loss

        batch = to_device(batch, self.engine.device)
        logits = step_logits(self.engine.module, batch, self.reward_ids)
        per_step, correct = prm_loss(logits, batch["step_labels"][batch["step_mask"]])
        n = self.units(batch)
        loss_sum, stats = per_step.sum(), {"acc": (float(correct.sum()), n), "steps": (n, 1.0)}
        if self.aux is not None:
            loss_sum, aux_stats = self.aux.add(loss_sum, n)
            stats.update(aux_stats)
        return MicroResult(loss_sum, stats)


def main(argv: list[str]) -> int:
    cfg = parse_config("prm", OfflineConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


@releases_output_dirs
def run(cfg: OfflineConfig) -> int:

    from repulse.data.process import ProcessRewardDataset
    from repulse.engine import export_model
    from repulse.models.loading import load_causal_lm
    from repulse.models.moe import router_aux_loss
    from repulse.run.start import start_run
    from repulse.trainers.common import (
        build_trained_engine,
        fit_spec,
        token_collate,
        trained_model_options,
        trained_tokenizer,
    )
    from repulse.trainers.fit import fit

    validate(cfg)
    path = cfg.model.model_name_or_path
    run_ = start_run(cfg)
    tokenizer = trained_tokenizer(cfg)
    reward_tokens = cfg.model.reward_tokens or DEFAULT_REWARD_TOKENS
    train_set, eval_set = train_eval_sets(
        cfg,
        lambda rows: ProcessRewardDataset(
            rows, tokenizer, cfg.data, cfg.model.placeholder_token, reward_tokens
        ),
    )
    collate = token_collate(cfg, tokenizer.pad_token_id)
    model = load_causal_lm(
        path,
        **trained_model_options(cfg, run_),
    )
    aux = router_aux_loss(model, cfg.model.aux_loss_coef, "--model.aux_loss_coef", path)
    spec = fit_spec(cfg, run_, train_set, eval_set, collate, "prm", tokenizer)
    engine = build_trained_engine(cfg, run_, model, spec)
    fit(engine, PRMMethod(engine, train_set.reward_token_ids, aux), spec)
    export_model(engine, run_.output_dir, tokenizer)
    if run_.rank == 0:
        print(f"[repulse] saved the process reward model to {run_.output_dir}", flush=True)
    return 0
