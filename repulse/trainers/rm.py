"""``repulse rm``: a scalar reward model trained on preference pairs (spec §3.2).

The model is a stock ``AutoModelForSequenceClassification`` with one label (its linear head
``score`` runs over every position); the reward r of a sequence is the head at its last
token. Chosen and rejected go through one forward (rows 0..B−1 chosen, B..2B−1 rejected, or
one packed row whose samples restart their ``position_ids``: the reward is then the head at
each packed sample's last token). Per pair, with m the row's ``margin`` field under
``--model.margin_loss_enable`` (else 0):

    sigmoid (Bradley–Terry):  ℓ = −log σ(r_c − r_r − m)
    logexp:                   ℓ = log(1 + exp(r_r − r_c + m))

and the step's loss is the mean over all pairs of the global batch (units = pairs). The
head's outputs are read in fp32; without ``--model.compute_fp32_loss_enable`` they are cast
to the training dtype before the loss, as OpenRLHF computes it (a no-op in fp32 training).

After training, the mean and (unbiased) std of the rewards of every chosen and rejected
sequence of the training set are written into the saved config (``repulse_reward_mean`` /
``repulse_reward_std``), for ``--reward.normalize_enable`` later, and so is the input format
the model was trained on (``repulse_reward_format``: prompt template or chat template, eos
appended), so that ``repulse rl``, ``eval-tail``, ``gcg`` and ``serve-rm`` score exactly that
format (``repulse.data.preference.reward_format``). The saved directory loads
with ``AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)`` and scores as
``repulse.models.loading.sequence_scores`` does.

Logged: loss, acc (r_c > r_r; ties count as wrong), chosen_reward, rejected_reward, margin
(mean r_c − r_r); ``eval_*`` of the same on ``--eval.dataset``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from repulse.config import parse_config
from repulse.config.sections import OfflineConfig
from repulse.errors import UserError
from repulse.run.dirs import releases_output_dirs
from repulse.trainers.dpo import pair_collate, require_model, to_device, train_eval_sets
from repulse.trainers.fit import MicroResult

LOSS_TYPES = ("sigmoid", "logexp")


def validate(cfg: OfflineConfig) -> None:
    require_model(cfg, "the LM (or reward model) to start the reward model from")
    if cfg.model.loss_type not in LOSS_TYPES:
        raise UserError(f"--model.loss_type {cfg.model.loss_type!r} is unknown; choose sigmoid or logexp.")


def tied_token_values(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> torch.Tensor:
    """``token_values`` whose result also depends (with weight 0) on the model's own output.

    Why: ``token_values`` reads the head's per-token output through a forward hook, so the
    loss never flows through the root module's return value. FSDP2 re-gathers a resharded
    root unit (which holds the head) from hooks on that return value, and without them its
    backward finds the head's weight freed. Adding 0·Σ(model output) changes no value and no
    gradient, but routes the backward through those hooks.
    """
    from repulse.models.loading import token_values

    outputs: list = []
    handle = model.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        values = token_values(model, input_ids, attention_mask, position_ids)
    finally:
        handle.remove()
    if torch.is_grad_enabled() and outputs:
        out = outputs[-1]
        pooled = out.logits if hasattr(out, "logits") else out[0]
        if isinstance(pooled, torch.Tensor) and pooled.requires_grad:
            values = values + 0.0 * pooled.float().sum()
    return values


class RewardModelMethod:
    """Pairwise reward-model loss on a preference-collated micro-batch; units = pairs."""

    def __init__(self, engine: Any, loss_type: str, margin: bool, loss_dtype: torch.dtype, aux: Any = None):
        self.engine = engine
        self.aux = aux  # RouterAuxLoss of an MoE reward model (--model.aux_loss_coef), or None
        self.loss_type = loss_type
        self.margin = margin
        self.loss_dtype = loss_dtype

    def units(self, batch: dict) -> float:
        return float(batch["margin"].numel())

    def scores(self, batch: dict) -> torch.Tensor:
        """The reward of every sequence of a (device) batch, ``[2B]`` fp32: chosen first.

        Padded: the head at each row's last attended token (``sequence_scores``). Packed: the
        head at each packed sample's last token (``cumsum(seq_lens) − 1``).
        """
        from repulse.models.positions import last_token_index

        values = tied_token_values(
            self.engine.module, batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids")
        )
        if "seq_last" in batch:  # shared-prompt rows: each sequence's last token
            last = batch["seq_last"].to(values.device)
            return values[last[:, 0], last[:, 1]]
        if "seq_lens" not in batch:
            idx = last_token_index(batch["attention_mask"]).to(values.device)
            return values.gather(1, idx[:, None]).squeeze(1)
        ends = batch["seq_lens"].to(values.device).cumsum(0) - 1
        return values[0, ends]

    def loss(self, batch: dict) -> MicroResult:
        from repulse.losses.preference import pairwise_logexp_loss, pairwise_sigmoid_loss, rm_metrics

        batch = to_device(batch, self.engine.device)
        b = batch["margin"].numel()
        rewards = self.scores(batch).to(self.loss_dtype)
        chosen, rejected = rewards[:b], rewards[b:]
        margin = batch["margin"].to(rewards.dtype) if self.margin else None
        fn = pairwise_sigmoid_loss if self.loss_type == "sigmoid" else pairwise_logexp_loss
        per_pair = fn(chosen, rejected, margin)
        stats = {k: (float(v) * b, b) for k, v in rm_metrics(chosen, rejected).items()}
        loss_sum = per_pair.sum()
        if self.aux is not None:
            loss_sum, aux_stats = self.aux.add(loss_sum, b)
            stats.update(aux_stats)
        return MicroResult(loss_sum, stats)


@torch.no_grad()
def reward_stats(
    engine: Any, method: RewardModelMethod, dataset: Any, collate: Any, micro: int
) -> tuple[float, float]:
    """Mean and unbiased std of the rewards of all chosen and rejected sequences of ``dataset``.

    Pairs are sharded over ranks; every rank runs the same number of forwards (a rank that
    ran out repeats a pair and discards it), so sharded engines' collectives stay in step.
    """
    rank, world = engine.rank, engine.world_size
    mine = list(range(rank, len(dataset), world))
    n_batches = math.ceil(math.ceil(len(dataset) / world) / micro)
    acc = torch.zeros(3, dtype=torch.float64)
    engine.eval()
    for j in range(n_batches):
        idx = mine[j * micro : (j + 1) * micro]
        batch = to_device(collate([dataset[i] for i in (idx or [0])]), engine.device)
        r = method.scores(batch).double().cpu()
        if idx:
            acc += torch.stack([r.sum(), (r * r).sum(), torch.tensor(float(r.numel()), dtype=torch.float64)])
    engine.train()
    s, sq, n = engine.all_reduce(acc.to(engine.device), "sum").cpu().tolist()
    mean = s / max(n, 1.0)
    var = (sq - n * mean * mean) / max(n - 1.0, 1.0)
    std = math.sqrt(var) if var > 0 else 1.0
    return mean, std


def main(argv: list[str]) -> int:
    cfg = parse_config("rm", OfflineConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


@releases_output_dirs
def run(cfg: OfflineConfig) -> int:

    from repulse.data.preference import PreferenceDataset, reward_format
    from repulse.engine import export_model
    from repulse.models.loading import load_scalar_model, resolve_dtype, set_reward_stats
    from repulse.models.moe import router_aux_loss
    from repulse.models.scalar import set_reward_format
    from repulse.run.start import start_run
    from repulse.trainers.common import (
        build_trained_engine,
        fit_spec,
        trained_model_options,
        trained_tokenizer,
    )
    from repulse.trainers.fit import fit

    validate(cfg)
    path = cfg.model.model_name_or_path
    run_ = start_run(cfg)
    tokenizer = trained_tokenizer(cfg)
    train_set, eval_set = train_eval_sets(cfg, lambda rows: PreferenceDataset(rows, tokenizer, cfg.data))
    for name, ds in (("--data.dataset", train_set), ("--eval.dataset", eval_set)):
        if cfg.model.margin_loss_enable and ds is not None and ds.stats["no_margin"]:
            raise UserError(
                f"--model.margin_loss_enable needs a 'margin' field in every row, but {ds.stats['no_margin']} of "
                f"{ds.stats['rows']} rows of {name} have none; add it, or drop --model.margin_loss_enable."
            )
    collate = pair_collate(cfg, tokenizer.pad_token_id)
    model = load_scalar_model(
        path,
        value_head_prefix=cfg.model.value_head_prefix,
        init_from_lm=True,
        pad_token_id=tokenizer.pad_token_id,
        **trained_model_options(cfg, run_),
    )
    aux = router_aux_loss(model, cfg.model.aux_loss_coef, "--model.aux_loss_coef", path)
    spec = fit_spec(cfg, run_, train_set, eval_set, collate, "rm", tokenizer)
    engine = build_trained_engine(cfg, run_, model, spec)
    loss_dtype = (
        torch.float32
        if cfg.model.compute_fp32_loss_enable
        else resolve_dtype(cfg.engine.param_dtype, run_.device)
    )
    method = RewardModelMethod(engine, cfg.model.loss_type, cfg.model.margin_loss_enable, loss_dtype, aux)
    fit(engine, method, spec)
    mean, std = reward_stats(engine, method, train_set, collate, cfg.train.micro_batch_size)
    set_reward_stats(engine.unwrapped(), mean, std)
    set_reward_format(engine.unwrapped(), reward_format(cfg.data, tokenizer))
    export_model(engine, run_.output_dir, tokenizer)
    if run_.rank == 0:
        print(
            f"[repulse] saved the reward model to {run_.output_dir} "
            f"(training-set reward mean {mean:.4f}, std {std:.4f})",
            flush=True,
        )
    return 0
