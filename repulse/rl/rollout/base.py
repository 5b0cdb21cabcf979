"""The rollout-engine seam: what the RL loop, the batch commands and Ray placement ask of a sampler.

A rollout engine turns prompt token ids into ``Samples`` and receives new weights. Two
backends implement it: ``hf`` (our KV-cached sampler over an HF model, in this process)
and ``vllm`` (``vllm.LLM``). The loop never calls a backend directly.

Weight updates are three calls so that a transport can stream buckets of tensors
(``repulse.rl.weight_sync``): ``begin_update()``, any number of ``load(named_tensors)``,
then ``end_update(version)``, after which ``weight_version == version`` (the policy's step).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from repulse.rl.rollout.samples import Samples


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 are off.

    ``seed`` None draws from the process's torch RNG (hf) or vLLM's own; an integer makes the
    call reproducible on its own. ``repetition_penalty`` 1 is off (batch generation only: the RL
    losses assume the policy's own distribution).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def truncated(self) -> bool:
        """Whether top-k / top-p cut the distribution (the sampler's density differs from π/T)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


def refuse_mid_update(updating: bool, weight_version: int) -> None:
    """Raise if an engine is asked to sample while a weight update is open.

    An update that failed or was cut off (a peer died mid-sync, tensors were missing) leaves some
    tensors new and some old; sampling from that mix would train on a policy that never existed.
    The engine stays refused until an update completes.
    """
    if updating:
        raise RuntimeError(
            f"this rollout engine holds an incomplete weight update on top of version {weight_version} (a sync "
            "failed or was cut off after it began): it would sample from a mix of two policies. Complete a new "
            "update (begin_update / load / end_update) before generating."
        )


@runtime_checkable
class RolloutEngine(Protocol):
    """A sampler with versioned weights.

    ``generate`` returns one prompt's ``n`` samples as consecutive rows, with token ids, the
    response mask (up to and including EOS), the per-token log-density of the distribution that
    drew each token (``Samples.logprobs``), truncation flags and the weight version per row.
    """

    weight_version: int

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Samples: ...

    def sleep(self, level: int = 1) -> None:
        """Free what the engine holds between rollouts (KV cache at level 1, weights too at 2)."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back what ``sleep`` freed (``tags``: e.g. ["weights"] before a sync, then ["kv_cache"])."""

    def begin_update(self) -> None:
        """Open an update; ``generate`` is refused from here until an ``end_update`` succeeds."""

    def load(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def end_update(self, version: int) -> None:
        """Close the update (refused if tensors are missing); ``weight_version`` becomes ``version``."""
