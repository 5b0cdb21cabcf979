"""Worker for the engine's multi-process tests; also a pattern for other distributed tests.

Run under ``torchrun``::

    python -m torch.distributed.run --nproc-per-node 2 tests/engine/engine_dist_worker.py \
        --runs fsdp:adam,local:adam --out result.pt --ckpt-dir /tmp/ck

The pattern: every rank builds the same tiny model from the same seed and the same
global batches (a pure function of the step index); rank r takes the r-th slice of
each global batch and splits it into micro-batches; each micro-batch's loss is its
*sum* over label tokens divided by the global token count (all-reduced), the
normalisation of :mod:`repulse.engine.base`. Rank 0 writes the results with
``torch.save``; the test compares them with a one-process run of :func:`train` (the
same function, imported in the test process).

For backends with a checkpoint (``--ckpt-dir``), the run saves after
``SAVE_AFTER`` steps, finishes, then a *fresh* engine (built from differently
initialised weights) loads that checkpoint and replays the remaining steps: losses
and final weights must be bit-identical.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repulse.config.sections import EngineSection  # noqa: E402
from repulse.engine import build_engine  # noqa: E402
from repulse.engine.base import OptimSpec  # noqa: E402

STEPS = 5
SAVE_AFTER = 3
GLOBAL_BATCH = 8
MICRO = 2
SEQ = 16
VOCAB = 128


def tiny_llama(seed: int = 0):
    """A ~30k-parameter Llama (vocab 128, hidden 32, 2 layers), identical for a given seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).float()


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s global batch: ids and labels with ~30% of positions ignored (-100).

    The masking makes ranks hold different token counts, so a wrong normalisation shows.
    """
    gen = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=gen)
    labels = ids.clone()
    labels[torch.rand(GLOBAL_BATCH, SEQ, generator=gen) < 0.3] = -100
    return ids, labels


def opt_spec(name: str, plain: bool = False) -> OptimSpec:
    """The runs' optimizer. ``plain``: constant lr from step 1, no clipping and a weight decay
    large enough to show in one step - the steps a test recomputes by hand."""
    return OptimSpec(
        name=name,
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1 if plain else 0.01,
        muon_lr=0.02,
        muon_momentum=0.95,
        muon_nesterov=True,
        muon_ns_steps=5,
        lr_scheduler="constant" if plain else "cosine_with_min_lr",
        warmup_ratio=0.0 if plain else 0.2,
        min_lr_ratio=0.1,
        max_norm=0.0 if plain else 0.9,  # below most steps' norm: clipping is exercised
        total_steps=STEPS,
    )


def make_engine(
    backend: str, optim: str, zero_stage: int, seed: int = 0, dtype: str = "fp32", plain: bool = False
):
    """Build the engine. Variants: ``fsdp-lossscale`` is FSDP with its fallback for a torch
    without ``set_force_sum_reduction_for_comms`` (loss x world size instead of a SUM
    reduction); ``fsdp-offload`` is FSDP with ``--engine.cpu_offload`` (``CPUOffloadPolicy``);
    ``deepspeed-offload`` is ZeRO with ``adam_offload`` (DeepSpeed's CPU Adam)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = GLOBAL_BATCH // (MICRO * world)
    cfg = EngineSection(
        backend=backend.split("-")[0],
        zero_stage=zero_stage,
        param_dtype=dtype,
        adam_offload=backend == "deepspeed-offload",
        cpu_offload=backend == "fsdp-offload",
    )
    extra: dict[str, Any] = {}
    if backend.startswith("deepspeed"):  # partition even tiny parameters, so ZeRO-3 gathering is exercised
        extra["config_overrides"] = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    build = lambda: build_engine(  # noqa: E731
        tiny_llama(seed),
        opt_spec(optim, plain),
        cfg,
        accumulation_steps=accum,
        micro_batch_size=MICRO,
        **extra,
    )
    if backend != "fsdp-lossscale":
        return build()
    from repulse.engine.fsdp import FSDPEngine

    original = FSDPEngine._sum_reduction
    FSDPEngine._sum_reduction = lambda self, model: setattr(self, "_loss_scale", float(self.world_size))
    try:
        return build()
    finally:
        FSDPEngine._sum_reduction = original


def fsdp_offload_policies(model) -> set[str]:
    """Names of the offload policies of every FSDP unit (``CPUOffloadPolicy`` when offloaded).

    Reads FSDP2's parameter groups (private, but the only place the policy is kept)."""
    from torch.distributed.fsdp import FSDPModule

    names = set()
    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            group = unit._get_fsdp_state()._fsdp_param_group
            if group is not None:
                names.add(type(group.offload_policy).__name__)
    return names


def train_step(engine, step: int) -> dict[str, float]:
    """One optimizer step on this rank's share of global batch ``step``; returns global metrics."""
    rank, world = engine.rank, engine.world_size
    ids, labels = global_batch(step)
    per_rank = GLOBAL_BATCH // world
    ids, labels = (
        ids[rank * per_rank : (rank + 1) * per_rank],
        labels[rank * per_rank : (rank + 1) * per_rank],
    )
    shifted = labels[:, 1:]
    local_units = float((shifted != -100).sum())
    total = engine.all_reduce(torch.tensor([local_units], dtype=torch.float64, device=engine.device), "sum")
    total_units = float(total.item())
    loss_sum = torch.zeros((), dtype=torch.float64)
    for i in range(0, per_rank, MICRO):
        x, y = ids[i : i + MICRO].to(engine.device), shifted[i : i + MICRO].to(engine.device)
        logits = engine.module(input_ids=x).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100, reduction="sum")
        engine.backward(loss / total_units)
        loss_sum += loss.detach().double().cpu()
    loss_all = engine.all_reduce(loss_sum.to(engine.device), "sum")
    out = engine.step()
    out["loss"] = float(loss_all.item()) / total_units
    return out


def train(
    backend: str,
    optim: str,
    zero_stage: int = 3,
    ckpt_dir: Path | None = None,
    dtype: str = "fp32",
    plain: bool = False,
) -> dict[str, Any]:
    """Train STEPS steps; with ``ckpt_dir`` also check that save -> load -> continue is exact.
    ``plain`` (``opt_spec``): also return the weights after each step (``states``)."""
    engine = make_engine(backend, optim, zero_stage, dtype=dtype, plain=plain)
    engine.train()
    metrics, states = [], []
    for step in range(STEPS):
        metrics.append(train_step(engine, step))
        if plain:
            states.append(engine.full_state_dict())
        if ckpt_dir is not None and step + 1 == SAVE_AFTER:
            engine.save(ckpt_dir)
    result: dict[str, Any] = {"metrics": metrics, "state": engine.full_state_dict(), "states": states}
    if backend.startswith("fsdp"):
        result["offload_policy"] = fsdp_offload_policies(engine.module)
    if backend.startswith("deepspeed"):
        result["ds_zero_stage"] = engine.ds.zero_optimization_stage()  # what DeepSpeed itself runs
    if ckpt_dir is not None:
        export = ckpt_dir.parent / (ckpt_dir.name + "_hf")
        engine.export_hf(export)
        result["export_dir"] = str(export)
        resumed = make_engine(
            backend, optim, zero_stage, seed=123, dtype=dtype
        )  # different init: load must overwrite
        resumed.load(ckpt_dir)
        resumed.train()
        result["resumed_metrics"] = [train_step(resumed, step) for step in range(SAVE_AFTER, STEPS)]
        result["resumed_state"] = resumed.full_state_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--runs", required=True, help="comma list of backend:optim[:zero_stage[:dtype[:plain]]]"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt-dir", default=None, help="enables the save/load check (one subdir per run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from repulse.engine import dist as rdist

    results = {}
    for run in args.runs.split(","):
        parts = run.split(":")
        backend, optim = parts[0], parts[1]
        stage = int(parts[2]) if len(parts) > 2 else 3
        dtype = parts[3] if len(parts) > 3 else "fp32"
        plain = len(parts) > 4 and parts[4] == "plain"
        ckpt = Path(args.ckpt_dir) / run.replace(":", "_") if args.ckpt_dir and backend != "local" else None
        results[run] = train(backend, optim, stage, None if plain else ckpt, dtype, plain)
    if rdist.is_main():
        torch.save(results, args.out)
    rdist.barrier()
    rdist.destroy()


if __name__ == "__main__":
    main()
