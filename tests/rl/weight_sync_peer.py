"""The other process of the weight-sync tests (``test_weight_sync.py``, ``vllm_backend/test_vllm_sync.py``).

Roles:
Each writes ``ready`` (the receiver: ``before.pt``) just before joining the group, so a test
can start its own end when the peer is there and time only the sync.

- ``receiver``: hosts a rollout engine (``--backend hf``: our sampler over its own copy of the
  toy model; ``vllm``: ``VLLMRolloutEngine``) and joins the sender's group as rank 1. It writes
  its greedy samples before any update, then after each update its samples, weight version and
  (hf) parameters. ``--die-after N`` SIGKILLs the process after its N-th bucket; ``--hang-after N``
  stops answering (sleeps) instead.
- ``sender``: rank 0 of the group; sends the start of an update and one bucket, then SIGKILLs
  itself (a trainer that dies mid-sync).
- ``colocated`` (under torchrun): every rank holds an hf engine with its own copy of the model;
  rank 0 alone holds the perturbed policy and ``LocalWeightSync`` broadcasts it; each rank writes
  its engine's parameters.
- ``vllm-colocated`` (under torchrun): the same with a ``VLLMRolloutEngine`` in every rank
  (``external_launcher``; ``--tp 2``: one engine over both ranks); each rank samples its own
  prompts before and after the sync.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import torch

PROMPTS = [[0, 40, 41, 42, 43, 44], [0, 50], [0, 60, 61, 62]]
LONG_PROMPT = [0] + [(7 * i) % 700 + 3 for i in range(140)]  # over one 128-token KV block: prefix-cached
GREEDY_TOKENS = 10


def perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Shift every parameter by seeded noise: a policy after some updates."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=gen) * scale).to(p.dtype))


def load_model(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from repulse.models.loading import disable_dropout, load_causal_lm

    return disable_dropout(load_causal_lm(path, trainable=False)).to(dtype)


def hf_engine(model: torch.nn.Module, owns: bool = True):
    from repulse.rl.rollout import HFRolloutEngine

    return HFRolloutEngine(
        lambda: model, eos_id=1, pad_id=2, micro_batch_size=64, device=torch.device("cpu"), owns_weights=owns
    )


def greedy(engine, prompts: list[list[int]] = PROMPTS) -> dict:
    from repulse.rl.rollout import SamplingParams

    s = engine.generate(prompts, 1, SamplingParams(max_new_tokens=GREEDY_TOKENS, temperature=0.0))
    return {
        "sequences": s.sequences,
        "attention_mask": s.attention_mask,
        "logprobs": s.logprobs,
        "versions": s.versions,
    }


def vllm_engine(path: str, dtype: torch.dtype, **kwargs):
    from repulse.rl.rollout.vllm import VLLMRolloutEngine

    return VLLMRolloutEngine(path, eos_id=1, pad_id=2, dtype=dtype, seed=0, enforce_eager=True, **kwargs)


def _checkpoint_layout(worker) -> dict:
    model = worker.model_runner.get_model()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.numel() and "_proj" not in n}


def vllm_checkpoint_tensors(engine, vocab: int) -> dict:
    """The tensors vLLM keeps in checkpoint layout on CPU, under their HF names: embeddings and
    LM head (vocabulary padding cut) and norms. Its CPU linear layers are repacked for oneDNN
    and cannot be read back; their effect shows in the samples."""
    state = engine._llm.collective_rpc(_checkpoint_layout)[0]
    return {
        n: t[:vocab] if n.endswith(("embed_tokens.weight", "lm_head.weight")) else t for n, t in state.items()
    }


class _Faulty:
    """Passes calls to the engine; after the N-th ``load`` the process dies or stops answering."""

    def __init__(self, engine, die_after: int | None, hang_after: int | None, marker: Path):
        self.engine, self.die_after, self.hang_after, self.marker = engine, die_after, hang_after, marker
        self.loads = 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def load(self, named):
        self.engine.load(named)
        self.loads += 1
        if self.die_after is not None and self.loads >= self.die_after:
            self.marker.write_text("dying")
            os.kill(os.getpid(), signal.SIGKILL)
        if self.hang_after is not None and self.loads >= self.hang_after:
            self.marker.write_text("hanging")
            time.sleep(600)


def receiver(args) -> None:
    from repulse.rl.weight_sync import GroupWeightReceiver, SyncOptions

    out = Path(args.out)
    dtype = getattr(torch, args.dtype)
    if args.backend == "vllm":
        engine, model = vllm_engine(args.model, dtype), None
        vocab = load_model(args.model, dtype).config.vocab_size
    else:
        model = load_model(args.model, dtype)
        engine = hf_engine(model)
    torch.save(greedy(engine), out / "before.pt")
    faulty = _Faulty(engine, args.die_after, args.hang_after, out / "fault")
    rx = GroupWeightReceiver(faulty, args.address, 1, 2, SyncOptions(timeout_s=args.timeout))
    while (version := rx.receive(wait_s=args.timeout)) is not None:
        result = greedy(engine)
        result["weight_version"] = engine.weight_version
        if model is not None:
            result["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            result["state"] = vllm_checkpoint_tensors(engine, vocab)
        torch.save(result, out / f"after_{version}.pt")


def sender(args) -> None:
    from repulse.rl.weight_sync import _BEGIN, _BUCKET, GroupWeightSender, SyncOptions, _header, _pack

    model = load_model(args.model, torch.float32)
    name, tensor = next(iter(model.state_dict().items()))
    Path(args.out, "ready").write_text("ready")
    tx = GroupWeightSender(args.address, 2, SyncOptions(timeout_s=args.timeout))
    _header(tx.channel, 0, op=_BEGIN)
    meta, data = _pack([(name, tensor)], torch.device("cpu"))
    _header(tx.channel, 0, (meta.numel(), data.numel(), 0), op=_BUCKET)
    tx.channel.broadcast(meta, 0, "manifest")
    tx.channel.broadcast(data, 0, "data")
    Path(args.out, "fault").write_text("dying")
    os.kill(os.getpid(), signal.SIGKILL)


def colocated(args) -> None:
    from repulse.rl.weight_sync import LocalWeightSync, SyncOptions

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    dtype = getattr(torch, args.dtype)
    engine_model = load_model(args.model, dtype)
    engine = hf_engine(engine_model)
    policy = None
    if rank == 0:
        policy = load_model(args.model, dtype)
        perturb(policy)
    sync = LocalWeightSync(engine, SyncOptions(bucket_mb=0.25, timeout_s=args.timeout))
    stats = sync.push(policy.state_dict() if policy is not None else None, version=5)
    torch.save(
        {
            "state": engine_model.state_dict(),
            "weight_version": engine.weight_version,
            "buckets": stats.buckets,
        },
        Path(args.out) / f"rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


def vllm_colocated(args) -> None:
    from repulse.rl.rollout import SamplingParams
    from repulse.rl.weight_sync import LocalWeightSync, SyncOptions

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    engine = vllm_engine(args.model, torch.float32, tensor_parallel_size=args.tp)
    mine = PROMPTS[rank::2]
    result = {"prompts": mine, "before": greedy(engine, mine)}
    policy = None
    if rank == 0:
        policy = load_model(args.model, torch.float32)
        perturb(policy)
    sync = LocalWeightSync(engine, SyncOptions(bucket_mb=0.1, timeout_s=args.timeout))
    result["buckets"] = sync.push(policy.state_dict() if policy is not None else None, version=5).buckets
    result["after"] = greedy(engine, mine)
    result["weight_version"] = engine.weight_version
    sampled = engine.generate([PROMPTS[0]], 2, SamplingParams(max_new_tokens=8, temperature=1.0))
    result["sampled"] = sampled.sequences
    torch.save(result, Path(args.out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["receiver", "sender", "colocated", "vllm-colocated"])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--address", default="127.0.0.1:0")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--die-after", type=int, default=None)
    p.add_argument("--hang-after", type=int, default=None)
    p.add_argument("--tp", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    roles = {"receiver": receiver, "sender": sender, "colocated": colocated, "vllm-colocated": vllm_colocated}
    roles[args.role](args)


if __name__ == "__main__":
    main()
