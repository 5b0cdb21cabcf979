"""What ``repulse generate``, ``score`` and ``chat`` share: the sampling parameters a config asks
for, the rollout engine it names, and turning (prompt, response) rows into rewards.

The reward section's RL-only knobs (``--reward.clip_range`` and friends) are refused for these
commands at parse time by ``repulse.config.usage``, which lists who reads each field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from repulse.config.sections import GenerationSection, InferVllmSection, RewardSection
from repulse.errors import UserError, warn_once
from repulse.rl.rewards import RewardInput, RewardSource, build_reward_sources, combine
from repulse.rl.rollout import HFRolloutEngine, RolloutEngine, SamplingParams
from repulse.rl.rollout.vllm import VLLM_MISSING, vllm_installed


def has_reward(reward: RewardSection) -> bool:
    return bool(reward.model_name_or_path or reward.remote_url)


def check_sampling(r: GenerationSection) -> None:
    """Parse-time checks of the sampling flags beyond their ranges (which the sections declare)."""
    default = GenerationSection()
    if r.greedy:
        unused = [
            f"--rollout.{f}"
            for f in ("temperature", "top_p", "top_k")
            if getattr(r, f) != getattr(default, f)
        ]
        if unused:
            warn_once(
                "greedy_unused",
                f"{', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect with --rollout.greedy "
                "(argmax decoding).",
            )
    if (r.greedy or r.temperature == 0) and r.n_samples_per_prompt > 1:
        warn_once(
            "greedy_n",
            f"greedy decoding gives the same response {r.n_samples_per_prompt} times per prompt "
            "(--rollout.n_samples_per_prompt); sample with --rollout.temperature > 0 for different ones.",
        )


def check_vllm_flags(vllm: InferVllmSection, backend: str) -> None:
    """``--vllm.*`` takes effect with the vllm backend only: refused with hf. The vllm backend without
    vLLM installed is refused here, at parse time, before a model loads or an output file is begun."""
    if backend == "vllm":
        if not vllm_installed():
            raise UserError(VLLM_MISSING)
        return
    default = InferVllmSection()
    changed = [f.name for f in dataclasses.fields(vllm) if getattr(vllm, f.name) != getattr(default, f.name)]
    if changed:
        flags = ", ".join(f"--vllm.{n}" for n in changed)
        raise UserError(
            f"{flags} {'is' if len(changed) == 1 else 'are'} read by the vllm backend only; add "
            "--rollout.backend vllm (seed: --eval_task generate_vllm) or remove "
            f"{'it' if len(changed) == 1 else 'them'}."
        )


def sampling_params(r: GenerationSection, seed: int | None) -> SamplingParams:
    greedy = r.greedy or r.temperature == 0
    return SamplingParams(
        max_new_tokens=r.max_new_tokens,
        temperature=0.0 if greedy else r.temperature,
        top_p=1.0 if greedy else r.top_p,
        top_k=0 if greedy else max(0, r.top_k),
        seed=seed,
        repetition_penalty=r.repetition_penalty,
    )


def build_rollout_engine(
    model_path: str,
    tokenizer: Any,
    rollout: GenerationSection,
    engine: Any,
    vllm: InferVllmSection | None,
    device: torch.device,
) -> RolloutEngine:
    """The engine ``--rollout.backend`` names, over ``model_path`` (frozen, dropout off)."""
    if rollout.backend == "vllm":
        return _vllm_engine(model_path, tokenizer, rollout, engine, vllm or InferVllmSection())
    from repulse.models.loading import load_causal_lm

    model = load_causal_lm(
        model_path, dtype=engine.param_dtype, attn=engine.attn_implementation, device=device, trainable=False
    )
    return HFRolloutEngine(
        lambda: model,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        micro_batch_size=rollout.micro_batch_size,
        device=device,
    )


def _vllm_engine(
    model_path: str, tokenizer: Any, rollout: GenerationSection, engine: Any, vllm: InferVllmSection
) -> RolloutEngine:
    """``vllm.LLM`` colocated in this process (in every rank under torchrun)."""
    import importlib

    try:  # an optional backend: its module imports vllm itself, lazily
        backend = importlib.import_module("repulse.rl.rollout.vllm")
    except ImportError:
        raise UserError(
            "--rollout.backend vllm is not available in this installation of repulse; use --rollout.backend hf."
        ) from None
    from repulse.models.loading import resolve_dtype

    return backend.VLLMRolloutEngine(
        model_path,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        dtype=resolve_dtype(engine.param_dtype),
        seed=rollout.seed,
        tensor_parallel_size=vllm.tensor_parallel_size,
        gpu_memory_utilization=vllm.gpu_memory_utilization,
        enable_prefix_caching=vllm.enable_prefix_caching,
        enforce_eager=vllm.enforce_eager,
        max_num_seqs=vllm.max_num_seqs,
    )


def decode_responses(tokenizer: Any, samples: Any) -> list[str]:
    """The response text of every row: its action tokens (EOS included), special tokens skipped."""
    return [
        tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
        for row, m in zip(samples.response.cpu(), samples.action_mask.cpu())
    ]


class Scorer:
    """The reward sources of a ``--reward`` section, combined with ``--reward.reduction``."""

    def __init__(self, reward: RewardSection, device: torch.device, micro_batch_size: int):
        self.sources: list[RewardSource] = build_reward_sources(reward, device, micro_batch_size)
        self.reduction = reward.reduction

    def __call__(
        self,
        prompts: list[str],
        responses: list[str],
        labels: list[Any] | None = None,
        questions: list[str] | None = None,
    ) -> list[float]:
        """One reward per (prompt, response); ``questions`` are the raw user texts when known."""
        batch = RewardInput(
            [p + r for p, r in zip(prompts, responses)],
            list(prompts),
            list(responses),
            list(labels) if labels is not None else [None] * len(prompts),
            list(questions) if questions is not None else None,
        )
        rewards = combine([src(batch).float() for src in self.sources], self.reduction)
        return [float(x) for x in rewards]
