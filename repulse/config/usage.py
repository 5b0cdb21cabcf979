"""Which config fields each command (and each RL method) reads: the one table behind "no silent field".

Several commands share a config root (``OfflineConfig`` serves six trainers) and every root
shares sections (``data``, ``engine``, ``reward``, ...), so a root accepts fields that a given
command never looks at. A field set away from its default for a command that does not read it
would be ignored without a word; ``check_fields`` (called by ``parse_config`` for every
command) refuses it instead, in one paragraph that names the flag, the commands (or
``--repulse.method`` values) that do read it, and what to do. Fields whose feature is not in
this version yet (``NOT_YET``) and fields kept only for compatibility (``_compat`` metadata in
``sections``) are accepted and warn once by name.

The table is data: ``READS`` maps a dotted field path, or a section prefix ending in ``.``, to
the commands that read it; ``NOT_YET`` the same for features still being built; ``METHOD_READS``
narrows fields of ``repulse rl`` to the methods that read them. The most specific entry wins (an
exact path over a prefix, a longer prefix over a shorter one, across ``READS`` and ``NOT_YET``; a
path may be in both when some commands read it and others do not yet). A new field is one line
here; ``tests/config/test_field_usage.py`` fails when a field of a command root is in no entry,
and when a command is declared to read a field that its code does not read on the toy (a
recorder notes every field read while the command runs).

Imports no torch: it runs at parse time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from repulse.config.schema import get_path, leaves
from repulse.config.sections import (
    ChatConfig,
    ConditionalSFTConfig,
    EvalTailConfig,
    GcgConfig,
    GenerateConfig,
    IterativeDPOConfig,
    OfflineConfig,
    RejectionSamplingConfig,
    RLConfig,
    ScoreConfig,
)
from repulse.errors import UserError, warn_once

# command -> its config root (every command that calls ``parse_config``)
ROOTS: dict[str, type] = {
    "sft": OfflineConfig,
    "rm": OfflineConfig,
    "prm": OfflineConfig,
    "dpo": OfflineConfig,
    "kto": OfflineConfig,
    "kd": OfflineConfig,
    "rl": RLConfig,
    "eval-tail": EvalTailConfig,
    "gcg": GcgConfig,
    "generate": GenerateConfig,
    "score": ScoreConfig,
    "chat": ChatConfig,
}

# ``repulse pipeline <kind>``: its root nests each stage's config under the stage's name, beside
# ``pipeline.*`` (read by every kind, ``pipeline.reference`` by iterative-dpo only, which its
# validation enforces). A stage field is read when the stage's command reads it: ``check_fields``
# checks each stage section against that command's entries, naming the flag with its stage prefix.
PIPELINES: dict[str, tuple[type, dict[str, str]]] = {
    "pipeline rejection-sampling": (
        RejectionSamplingConfig,
        {"generate": "generate", "score": "score", "sft": "sft"},
    ),
    "pipeline iterative-dpo": (IterativeDPOConfig, {"generate": "generate", "score": "score", "dpo": "dpo"}),
    "pipeline csft": (ConditionalSFTConfig, {"score": "score", "sft": "sft"}),
}

OFFLINE = ("sft", "rm", "prm", "dpo", "kto", "kd")
TRAINING = (*OFFLINE, "rl")
SAMPLING = ("rl", "eval-tail", "gcg")  # commands that generate responses and score them
ALL = (*TRAINING, "eval-tail", "gcg")
BATCH = ("generate", "score", "chat")  # batch inference: their roots hold only what they read

# command -> the field that picks its method, and that field's values
METHOD_FIELD: dict[str, str] = {"rl": "repulse.method"}
PPO = ("rl",)
REINFORCE_FAMILY = ("reinforce", "reward_transform", "p_proposal", "repulse")
METHODS: dict[str, tuple[str, ...]] = {"rl": (*PPO, *REINFORCE_FAMILY)}

# field (or section prefix ending in '.') -> the commands that read it
READS: dict[str, tuple[str, ...]] = {
    # data: training files (offline), prompts (rl, eval-tail), rendering
    "data.dataset": (*OFFLINE, "generate", "score"),
    "data.dataset_probs": (*OFFLINE, "generate", "score"),
    "data.dataset_split": (*OFFLINE, "generate", "score"),
    "data.seed": ("generate", "score"),
    "data.tokenizer": ("score",),
    "data.prompt_max_len": ("generate",),
    "data.iter": ("generate",),
    "data.rollout_batch_size": ("generate",),
    "data.input_key": ("sft", "prm", "kto", "kd", "rl", "eval-tail", "generate", "score"),
    "data.output_key": ("sft", "kto", "kd", "score"),
    "data.label_key": ("prm", "kto", "rl", "eval-tail", "score"),
    "data.chosen_key": ("rm", "dpo"),
    "data.rejected_key": ("rm", "dpo"),
    "data.prompt_key": ("rm", "dpo"),
    "data.input_template": ("sft", "rm", "dpo", "kto", "kd", "rl", "eval-tail", "gcg", *BATCH),
    "data.apply_chat_template": ("sft", "rm", "dpo", "kto", "kd", "rl", "eval-tail", "gcg", *BATCH),
    "data.tokenizer_chat_template": (*ALL, *BATCH),
    "data.multiturn": ("sft", "kd"),
    "data.max_len": (*TRAINING, "eval-tail"),
    "data.max_samples": (*TRAINING, "eval-tail", "generate", "score"),
    "data.disable_fast_tokenizer": OFFLINE,
    "data.dataloader_num_workers": OFFLINE,
    "data.prompt_dataset": ("rl", "eval-tail"),
    "data.prompt_probs": ("rl", "eval-tail"),
    "data.prompt_split": ("rl", "eval-tail"),
    # train
    "train.batch_size": TRAINING,
    "train.micro_batch_size": TRAINING,
    "train.max_epochs": OFFLINE,
    "train.max_steps": TRAINING,
    "train.seed": ALL,
    "train.full_determinism_enable": TRAINING,
    "train.num_episodes": ("rl",),
    "train.async_enable": ("rl",),
    "train.async_queue_size": ("rl",),
    "train.nan_policy": TRAINING,
    "train.nan_max_consecutive_skips": TRAINING,
    # engine
    "engine.": TRAINING,
    "engine.param_dtype": (*ALL, "generate", "chat"),
    "engine.attn_implementation": (*ALL, "generate", "chat"),
    "engine.shared_prompt_enable": ("rm", "dpo"),
    # outputs, evaluation, logging
    "ckpt.": TRAINING,
    "ckpt.save_hf": (*OFFLINE, "rl"),
    "ckpt.output_dir": ALL,
    "ckpt.overwrite": ALL,
    "eval.": TRAINING,
    "eval.temperature": ("rl",),
    "eval.n_samples_per_prompt": ("rl",),
    "logger.": TRAINING,
    # the offline trainers' model, optimizer and reference
    "model.": OFFLINE,
    "model.model_name_or_path": (*OFFLINE, "generate", "chat"),
    "model.pretrain_mode_enable": ("sft",),
    "model.loss_type": ("rm",),
    "model.margin_loss_enable": ("rm",),
    "model.compute_fp32_loss_enable": ("rm",),
    "model.value_head_prefix": ("rm",),
    "model.beta": ("dpo", "kto"),
    "model.ipo_enable": ("dpo",),
    "model.label_smoothing": ("dpo",),
    "model.nll_loss_coef": ("dpo",),
    "model.desirable_weight": ("kto",),
    "model.undesirable_weight": ("kto",),
    "model.placeholder_token": ("prm",),
    "model.reward_tokens": ("prm",),
    "model.teacher_model": ("kd",),
    "model.teacher_offload": ("kd",),
    "model.kd_coef": ("kd",),
    "adam.": OFFLINE,
    "muon.": OFFLINE,
    "optim.": OFFLINE,
    "ref.model_name_or_path": ("dpo", "kto", "rl", "eval-tail"),
    "ref.offload": ("dpo", "kto", "rl"),
    "ref.num_nodes": ("rl",),
    "ref.num_gpus_per_node": ("rl",),
    # RL roles and algorithm
    "actor.": ("rl",),
    "critic.": ("rl",),
    "algo.": ("rl",),
    "repulse.": ("rl",),
    "reward.": (*SAMPLING, *BATCH),
    "reward.normalize_enable": ("rl", "generate", "score"),
    "reward.clip_range": ("rl",),
    "reward.overlong_buffer_len": ("rl",),
    "reward.overlong_penalty_factor": ("rl",),
    "reward.stop_properly_penalty_coef": ("rl",),
    "reward.cap": ("rl", "generate", "score"),
    "reward.num_nodes": ("rl",),
    "reward.num_gpus_per_node": ("rl",),
    "rollout.": (*SAMPLING, "generate", "chat"),
    "rollout.batch_size": ("rl",),
    "rollout.backend": ("rl", "generate", "chat"),  # eval-tail and gcg sample with the hf engine only
    "rollout.greedy": ("generate", "chat"),
    "rollout.repetition_penalty": ("generate", "chat"),
    "rollout.seed": ("generate", "chat"),
    "vllm.": ("rl", "generate"),
    "launch.": ("rl",),
    "score.": ("generate", "score"),
    "output.path": ("generate", "score"),
    "chat.": ("chat",),
    # evaluation commands
    "tail.": ("eval-tail",),
    "gcg.": ("gcg",),
}

# fields of ``repulse rl`` that only some ``--repulse.method`` values read (others: every method)
METHOD_READS: dict[str, tuple[str, ...]] = {
    "train.batch_size": PPO,  # the REINFORCE family updates once per rollout batch
    "algo.": PPO,
    "algo.kl.init_coef": METHODS["rl"],
    "algo.kl.estimator": METHODS["rl"],
    "actor.eps_clip": PPO,
    "actor.eps_clip_low_high": PPO,
    "actor.dual_clip": PPO,
    "actor.entropy_coef": PPO,
    "actor.policy_loss_type": PPO,
    "critic.": PPO,
    "reward.normalize_enable": PPO,
    "reward.clip_range": PPO,
    "reward.overlong_buffer_len": PPO,
    "reward.overlong_penalty_factor": PPO,
    "reward.stop_properly_penalty_coef": PPO,
    "repulse.reward_transform": ("reward_transform",),
    "repulse.transform_a": ("reward_transform",),
    "repulse.transform_b": ("reward_transform",),
    "repulse.transform_eta": ("reward_transform",),
    "repulse.alpha": ("p_proposal", "repulse"),
    "repulse.beta": ("p_proposal", "repulse"),
    "repulse.proposal_lr": ("repulse",),
    "repulse.q_updates_per_step": ("repulse",),
    "repulse.p_first": ("repulse",),
}

# Features not in this version yet. field (or prefix) -> (commands, what happens instead): accepted
# by those commands, and a value away from the default warns once by name. When the feature lands,
# its line moves to READS.
NOT_YET: dict[str, tuple[tuple[str, ...], str]] = {
    "rollout.vllm_generate_batch_size": (
        ("rl",),
        "the vLLM engine takes each rollout batch in one call and schedules it itself "
        "(--vllm.max_num_seqs bounds the sequences decoded at once)",
    ),
}


def _best(path: str, tables: tuple[dict[str, Any], ...]) -> str | None:
    """The most specific pattern of ``tables`` matching ``path``: the path itself, else its longest
    matching prefix (across all the tables, so an exact entry in one overrides a prefix in another)."""
    if any(path in t for t in tables):
        return path
    best = None
    for table in tables:
        for pattern in table:
            if (
                pattern.endswith(".")
                and path.startswith(pattern)
                and (best is None or len(pattern) > len(best))
            ):
                best = pattern
    return best


def readers(path: str) -> tuple[str, ...]:
    """The commands that read ``path`` (not counting those where it is ``NOT_YET``)."""
    best = _best(path, (READS, NOT_YET))
    return READS.get(best, ()) if best is not None else ()


def not_yet(path: str) -> tuple[tuple[str, ...], str] | None:
    """``(commands, reason)`` when ``path``'s feature is not in this version yet, else None."""
    best = _best(path, (READS, NOT_YET))
    return NOT_YET.get(best) if best is not None else None


def method_readers(command: str, path: str) -> tuple[str, ...]:
    """The methods of ``command`` that read ``path`` (all of them when no entry narrows it)."""
    if command not in METHOD_FIELD:
        return ()
    best = _best(path, (METHOD_READS,))
    return METHOD_READS[best] if best is not None else METHODS[command]


def method_fields(command: str, method: str) -> tuple[str, ...]:
    """The ``METHOD_READS`` patterns ``method`` reads: the fields it has beyond what every method reads."""
    return tuple(
        p for p, methods in METHOD_READS.items() if method in methods and command in (readers(p) or ())
    )


@functools.cache
def leaf_paths(root: type) -> tuple[str, ...]:
    """The dotted paths of ``root``'s settable fields (cached: the schema does not change in a run)."""
    return tuple(leaves(root))


@functools.cache
def compat_fields(root: type) -> frozenset[str]:
    """Dotted paths of the fields kept only for compatibility (``_compat``: they warn, never act)."""
    out: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif f.metadata.get("no_effect"):
                out.add(f"{prefix}{f.name}")

    walk(root(), "")
    return frozenset(out)


def reads(command: str, path: str, method: str | None = None) -> bool:
    """Whether ``command`` (with ``method``, where it has methods) reads ``path``."""
    if command not in readers(path):
        return False
    if method not in METHODS.get(command, ()):
        return True  # no method, or one the command's validation refuses by name
    return method in method_readers(command, path)


def accepted(command: str, path: str, method: str | None = None) -> bool:
    """Whether ``command`` (with ``method``) takes ``path`` without refusing it: it reads it, or the
    field warns (compatibility-only, or not in this version yet), or it is no field of the command's
    root at all (the parser then names it as unknown)."""
    root = ROOTS.get(command)
    if root is None or path not in leaf_paths(root) or path in compat_fields(root):
        return True
    pending = not_yet(path)
    if pending is not None and command in pending[0]:
        return True
    return reads(command, path, method)


def _commands(names: tuple[str, ...]) -> str:
    listed = [f"repulse {c}" for c in names]
    return listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]


def _not_read(flag: str, path: str, command: str, users: tuple[str, ...]) -> str:
    """The refusal of a field ``command`` does not read: who reads it (or will), and what to do."""
    pending = not_yet(path)
    waiting = tuple(c for c in (pending[0] if pending else ()) if c not in users)
    head = f"{flag} is not read by repulse {command}, which would ignore it"
    if users:
        one = len(users) == 1
        return (
            f"{head}: only {_commands(users)} {'reads' if one else 'read'} it. Remove it, or run "
            f"{'that command' if one else 'one of those'}."
        )
    if waiting:
        return (
            f"{head}; {_commands(waiting)} {'accepts' if len(waiting) == 1 else 'accept'} it, with no effect in "
            f"this version yet ({pending[1]}). Remove it."
        )
    return f"{head}: no command reads --{path} in this version. Remove it."


def check_fields(cfg: Any, command: str, prefix: str = "") -> None:
    """Refuse a field ``command`` (or its method) does not read, set away from its default; warn once
    for a field whose feature is not in this version yet. Compatibility-only fields are warned about
    by ``repulse.config.warn_no_effect``. A pipeline's stage sections are checked as the stage's
    command (``PIPELINES``); ``prefix`` is then the stage's name, which the flags carry."""
    if command in PIPELINES:
        root, stages = PIPELINES[command]
        if type(cfg) is not root:
            raise KeyError(f"repulse.config.usage.PIPELINES[{command!r}] is not {type(cfg).__name__}")
        for section, stage_command in stages.items():
            check_fields(getattr(cfg, section), stage_command, f"{section}.")
        return
    root = type(cfg)
    if ROOTS.get(command) is not root:
        raise KeyError(f"repulse.config.usage.ROOTS has no entry {command!r}: {root.__name__} (add it)")
    default = root()
    compat = compat_fields(root)
    method_path = METHOD_FIELD.get(command)
    method = get_path(cfg, method_path) if method_path else None
    for path in leaf_paths(root):
        if path in compat:
            continue
        value = get_path(cfg, path)
        if value == get_path(default, path):
            continue
        flag = f"--{prefix}{path} {value!r}"
        pending = not_yet(path)
        if pending is not None and command in pending[0]:
            warn_once(
                f"not_yet:{command}:--{path}", f"{flag} has no effect in this version yet: {pending[1]}."
            )
            continue
        users = readers(path)
        if command not in users:
            raise UserError(_not_read(flag, path, command, users))
        if method is not None and method in METHODS[command]:
            methods = method_readers(command, path)
            if method not in methods:
                listed = " or ".join(f"--{method_path} {m}" for m in methods)
                raise UserError(
                    f"{flag} is not read by repulse {command} --{method_path} {method}, which would ignore "
                    f"it: only {listed} reads it. Remove it, or choose a method that uses it."
                )
