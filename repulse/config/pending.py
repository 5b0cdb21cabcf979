"""Flags accepted today whose feature is still being built: each warns by name when it is set.

A seed command may carry Ray placement (``--actor_num_nodes 2``) or vLLM settings
(``--vllm_num_engines 4``, ``--rollout.backend vllm``) that this version cannot honour yet.
They are accepted, so the command runs, and ``repulse.config.warn_no_effect`` warns once per
field set away from its default, naming the flag and saying what happens instead. This table
is the only marking: when a feature lands, delete its lines here (the field in
``repulse.config.sections`` stays as it is). ``PENDING_IN`` does the same for a field that some
commands already honour and one does not yet.
"""

from __future__ import annotations

_RAY = (
    "Ray placement of the RL roles is not in this version yet: every role runs in the processes the "
    "launcher started (torchrun, or one process)"
)
_VLLM = "vLLM rollouts are not in this version yet: the hf backend samples (--rollout.backend hf)"

# dotted field path -> what happens instead, shown in the warning
PENDING: dict[str, str] = {
    **{f"{role}.{knob}": _RAY for role in ("actor", "critic", "ref", "reward") for knob in ("num_nodes", "num_gpus_per_node")},
    "rollout.backend": _VLLM,
    "rollout.vllm_generate_batch_size": _VLLM,
    "vllm.tensor_parallel_size": _VLLM,
    "vllm.gpu_memory_utilization": _VLLM,
    "vllm.enable_prefix_caching": _VLLM,
    "vllm.enforce_eager": _VLLM,
    "vllm.enable_sleep": _VLLM,
    "vllm.sync_backend": _VLLM,
    "vllm.sync_with_ray": _VLLM,
}  # fmt: skip

# command -> {dotted field path -> what happens instead}: fields that command does not honour yet
PENDING_IN: dict[str, dict[str, str]] = {
    "rl": {
        "ckpt.save_hf": "repulse rl writes no HF model beside its checkpoints yet; its output directory is one",
    },
}
