"""Worker for the engines' non-finite tests (one process, or several under ``torchrun``).

For each ``backend:stage`` in ``--runs`` (the engines of ``engine_dist_worker``):

1. a normal step;
2. a step whose gradient is NaN on the *last* rank only (its loss stays finite): every rank must
   report ``update_skipped``, keep its weights and its learning-rate schedule position;
3. a normal step again, which must change the weights;
4. one weight poisoned with NaN - for sharded engines in the last rank's shard only, for
   replicated ones in every copy: ``first_nonfinite_parameter`` must name it on every rank and
   ``export_hf`` must raise ``NonFiniteError`` on every rank (none may be left waiting in a
   collective), writing nothing.

Rank 0 writes the observations with ``torch.save``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_dist_worker as w  # noqa: E402

from repulse.engine import dist as rdist  # noqa: E402
from repulse.engine.finite import local_tensor  # noqa: E402
from repulse.errors import NonFiniteError  # noqa: E402

POISONED = "model.layers.0.mlp.up_proj.weight"


def _param(engine, name: str) -> torch.nn.Parameter:
    module = engine.unwrapped()
    return dict(module.named_parameters())[name]


def train_step(engine, step: int, poison: bool) -> dict[str, float]:
    """``engine_dist_worker.train_step``, plus - when ``poison`` - a term worth 0 whose gradient is NaN
    (d/dx sqrt(x^2) at x = 0 is inf * 0) on this rank: the loss stays finite, the gradient does not."""
    rank, world = engine.rank, engine.world_size
    ids, labels = w.global_batch(step)
    per = w.GLOBAL_BATCH // world
    ids, shifted = ids[rank * per : (rank + 1) * per], labels[rank * per : (rank + 1) * per, 1:]
    total = engine.all_reduce(torch.tensor([float((shifted != -100).sum())], dtype=torch.float64), "sum")
    for i in range(0, per, w.MICRO):
        x, y = ids[i : i + w.MICRO], shifted[i : i + w.MICRO]
        logits = engine.module(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, w.VOCAB), y.reshape(-1), ignore_index=-100, reduction="sum"
        )
        if poison and i == 0:
            loss = loss + torch.sqrt((logits - logits.detach()).pow(2)).sum()
        engine.backward(loss / float(total.item()))
    return engine.step()


def _snapshot(engine) -> dict[str, torch.Tensor]:
    """Copies: on one CPU process FSDP's "full" state dict is the live shards themselves."""
    return {k: v.clone() for k, v in engine.full_state_dict().items()}


def _gather(obj):
    if rdist.get_world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * rdist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run(backend: str, stage: int, export_dir: Path) -> dict:
    engine = w.make_engine(backend, "adam", stage)
    engine.train()
    last = rdist.get_rank() == rdist.get_world_size() - 1
    first = train_step(engine, 0, poison=False)
    before = _snapshot(engine)
    bad = train_step(engine, 1, poison=last)
    after_bad = _snapshot(engine)
    good = train_step(engine, 2, poison=False)
    after_good = _snapshot(engine)
    # sharded weights: one rank's shard only (the ranks must agree); replicated: every copy
    sharded = backend == "fsdp" or (backend == "deepspeed" and stage == 3)
    if last or not sharded:
        with torch.no_grad():
            local_tensor(_param(engine, POISONED)).view(-1)[0] = float("nan")
    named = engine.first_nonfinite_parameter()
    try:
        engine.export_hf(export_dir)
        raised = None
    except NonFiniteError as exc:
        raised = str(exc)
    return {
        "first": first,
        "bad": bad,
        "good": good,
        "unchanged_by_bad": all(torch.equal(before[k], after_bad[k]) for k in before),
        "changed_by_good": any(not torch.equal(after_bad[k], after_good[k]) for k in after_bad),
        "named": _gather(named),
        "raised": _gather(raised),
        "exported": export_dir.exists() and any(export_dir.iterdir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", required=True, help="comma list of backend:zero_stage")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {}
    for spec in args.runs.split(","):
        backend, stage = spec.split(":")
        results[spec] = run(backend, int(stage), Path(args.out).parent / f"export_{backend}_{stage}")
    if rdist.get_rank() == 0:
        torch.save(results, args.out)
    rdist.barrier()
    rdist.destroy()


if __name__ == "__main__":
    main()
