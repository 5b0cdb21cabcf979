"""Translate the seed documents' command lines into repulse's dotted flags.

Users copy commands from OpenRLHF's documentation (flat flags of <=0.10.1 such as
``--pretrain``/``--zero_stage``, or the 0.10.2 hierarchy such as ``--ds.zero_stage``) and
from the RePULSe fork's README (``--target_dist_beta``, ``--do_harmlessness_training``, ...).
``translate_argv`` rewrites them into our names *before* the parser runs, so such a
command runs after replacing its launcher prefix (``deepspeed --module
openrlhf.cli.train_sft``) with ``repulse sft``.

The translation is one table of data (``_TRAIN_COMMON``, ``_OFFLINE``, ``_RL``, ``_GCG``,
``_SERVE_RM``). Each entry says where a flag goes, that it is accepted and ignored (with
the reason, reported in one note), or that it names a feature repulse does not have (a
``UserError`` - silently training something else would be worse). The few rules that
depend on values - sign flips, the fork's mode flags that pick the method, sizes that
count prompts in one place and samples in the other - are small named functions below the
tables. A flag found nowhere is left untouched: the parser rejects it and suggests the
closest valid name.

Destinations are dotted paths of ``repulse.config.sections``; ``"a.b=v"`` means the flag
was a bare switch that becomes ``--a.b v`` (``--bf16`` -> ``--engine.param_dtype bf16``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repulse.config.sections import CkptSection, DataSection, RolloutSection
from repulse.errors import UserError

COMMANDS: tuple[str, ...] = ("sft", "rm", "prm", "dpo", "kto", "kd", "rl", "serve-rm", "gcg")

# openrlhf.cli.<module> -> our command (both the fork's non-Ray train_ppo and upstream's train_ppo_ray).
MODULE_TO_COMMAND: dict[str, str] = {
    "train_sft": "sft",
    "train_rm": "rm",
    "train_prm": "prm",
    "train_dpo": "dpo",
    "train_kto": "kto",
    "train_kd": "kd",
    "train_ppo": "rl",
    "train_ppo_ray": "rl",
    "serve_rm": "serve-rm",
    "evaluate_gcg_sz": "gcg",  # the RePULSe fork's GCG evaluation
}

Dest = tuple[str, ...]

# Reasons for accepted-and-ignored flags; the ignore note groups flags by these strings.
_RESEARCH = "research-only in the RePULSe fork: diagnostics, ablations and dead code (spec §6)"
_PLACEMENT = "GPU placement / memory knob of OpenRLHF's Ray+DeepSpeed launcher; no effect on results here"
_LAUNCHER = "set by the launcher (torchrun/deepspeed), not needed"
_DEAD = "dead flag in OpenRLHF itself (removed feature)"
_ASYNC = "asynchronous rollout pipelining is not implemented: training runs synchronously (on-policy)"
_HEAD = "reward models load with AutoModelForSequenceClassification, which finds its own head"


@dataclass(frozen=True)
class _Table:
    """One scope of the translation: where flags go, which are ignored, which are refused."""

    renames: dict[str, Dest] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    prefixes: tuple[tuple[str, str], ...] = ()


def _both(leaf: str) -> Dest:
    """RL optimiser flags of the flat era applied to the actor and the critic alike."""
    return (f"actor.{leaf}", f"critic.{leaf}")


# --------------------------------------------------------------------------- the table

# Flags every training command (offline and RL) shares: spec §2.4 rows that apply to all.
_TRAIN_COMMON = _Table(
    renames={
        # checkpoints / outputs
        "save_path": ("ckpt.output_dir",),
        "save_steps": ("ckpt.save_steps",),
        "save_hf_ckpt": ("ckpt.save_hf",),
        "disable_ds_ckpt": ("ckpt.disable_ds",),
        "ckpt_path": ("ckpt.path",),
        "max_ckpt_num": ("ckpt.max_num",),
        "max_ckpt_mem": ("ckpt.max_mem",),
        "load_checkpoint": ("ckpt.load_enable",),
        "use_ds_universal_ckpt": ("engine.use_universal_ckpt",),
        # logging / eval
        "logging_steps": ("logger.logging_steps",),
        "eval_steps": ("eval.steps",),
        "eval_dataset": ("eval.dataset",),
        "eval_split": ("eval.split",),
        "use_wandb": ("logger.wandb.key",),
        "wandb_org": ("logger.wandb.org",),
        "wandb_group": ("logger.wandb.group",),
        "wandb_project": ("logger.wandb.project",),
        "wandb_run_name": ("logger.wandb.run_name",),
        "use_tensorboard": ("logger.tensorboard_dir",),
        # batching / reproducibility
        "micro_train_batch_size": ("train.micro_batch_size",),
        "train_batch_size": ("train.batch_size",),
        "seed": ("train.seed",),
        "full_determinism": ("train.full_determinism_enable",),
        # engine (the seed's DeepSpeed section)
        "zero_stage": ("engine.zero_stage",),
        "param_dtype": ("engine.param_dtype",),
        "bf16": ("engine.param_dtype=bf16",),
        "flash_attn": ("engine.attn_implementation=flash_attention_2",),
        "attn_implementation": ("engine.attn_implementation",),
        "zpg": ("engine.zpg",),
        "adam_offload": ("engine.adam_offload",),
        "use_liger_kernel": ("engine.use_liger_kernel",),
        "grad_accum_dtype": ("engine.grad_accum_dtype",),
        "overlap_comm": ("engine.overlap_comm",),
        "deepcompile": ("engine.deepcompile",),
        "ds_tensor_parallel_size": ("engine.tensor_parallel_size",),
        "ring_attn_size": ("engine.ring_attn_size",),
        "ring_head_stride": ("engine.ring_attn_head_stride",),
        "packing_samples": ("engine.packing_samples",),
        # data
        "dataset": ("data.dataset",),
        "dataset_probs": ("data.dataset_probs",),
        "dataset_split": ("data.dataset_split",),
        "train_split": ("data.dataset_split",),
        "max_samples": ("data.max_samples",),
        "max_len": ("data.max_len",),
        "input_key": ("data.input_key",),
        "output_key": ("data.output_key",),
        "label_key": ("data.label_key",),
        "prompt_key": ("data.prompt_key",),
        "chosen_key": ("data.chosen_key",),
        "rejected_key": ("data.rejected_key",),
        "input_template": ("data.input_template",),
        "apply_chat_template": ("data.apply_chat_template",),
        "tokenizer_chat_template": ("data.tokenizer_chat_template",),
        "multiturn": ("data.multiturn",),
        "disable_fast_tokenizer": ("data.disable_fast_tokenizer",),
        "dataloader_num_workers": ("data.dataloader_num_workers",),
    },
    ignored={
        "local_rank": _LAUNCHER,
        "use_ms": "ModelScope hub downloads are not supported; models and data load from local paths or the HF Hub",
        "ds.experts_implementation": "MoE expert-kernel choice; transformers picks one",
    },
)

# SFT / RM / PRM / DPO / KTO / KD: one trained model, optimiser flags flat (0.10.2 keeps them flat too).
_OFFLINE = _Table(
    renames={
        "pretrain": ("model.model_name_or_path",),
        "learning_rate": ("adam.lr",),
        "l2": ("adam.weight_decay",),
        "adam_betas": ("adam.betas",),
        "optim": ("optim.name",),
        "lr_scheduler": ("optim.lr_scheduler",),
        "lr_warmup_ratio": ("optim.lr_warmup_ratio",),
        "min_lr_ratio": ("optim.min_lr_ratio",),
        "max_norm": ("optim.max_norm",),
        "max_epochs": ("train.max_epochs",),
        "max_epoch": (
            "train.max_epochs",
        ),  # spelled so in the RLHF options page; argparse accepted the prefix
        "gradient_checkpointing": ("model.gradient_checkpointing_enable",),
        "gradient_checkpointing_use_reentrant": ("model.gradient_checkpointing_reentrant",),
        "aux_loss_coef": ("model.aux_loss_coef",),
        "pretrain_mode": ("model.pretrain_mode_enable",),
        "load_in_4bit": ("model.load_in_4bit",),
        "lora_rank": ("model.lora.rank",),
        "lora_alpha": ("model.lora.alpha",),
        "lora_dropout": ("model.lora.dropout",),
        "target_modules": ("model.lora.target_modules",),
        # reward model
        "value_head_prefix": ("model.value_head_prefix",),
        "value_prefix_head": ("model.value_head_prefix",),  # the README's typo of the flag above
        "compute_fp32_loss": ("model.compute_fp32_loss_enable",),
        "margin_loss": ("model.margin_loss_enable",),
        "loss": ("model.loss_type",),
        # DPO / KTO
        "ref_pretrain": ("ref.model_name_or_path",),
        "ref_offload": ("ref.offload",),
        "beta": ("model.beta",),
        "ipo": ("model.ipo_enable",),
        "label_smoothing": ("model.label_smoothing",),
        "nll_loss_coef": ("model.nll_loss_coef",),
        "desirable_loss_weight": ("model.desirable_weight",),
        "undesirable_loss_weight": ("model.undesirable_weight",),
        # PRM
        "placeholder_token": ("model.placeholder_token",),
        "reward_tokens": ("model.reward_tokens",),
        # KD
        "teacher_model": ("model.teacher_model",),
        "teacher_offload": ("model.teacher_offload",),
        "kd_coef": ("model.kd_coef",),
        # 0.10.2 names that differ from ours
        "ds.load_in_4bit": ("model.load_in_4bit",),
        "ds.value_head_prefix": ("model.value_head_prefix",),
        "muon.no_nesterov": ("muon.nesterov=false",),
    },
    prefixes=(("ds.lora.", "model.lora."), ("ds.", "engine.")),
)

# PPO-family RL, RePULSe and its baselines (upstream train_ppo_ray and the fork's train_ppo).
_RL = _Table(
    renames={
        "pretrain": ("actor.model_name_or_path",),
        "reward_pretrain": ("reward.model_name_or_path",),
        "critic_pretrain": ("critic.model_name_or_path",),
        "remote_rm_url": ("reward.remote_url",),
        "prompt_data": ("data.prompt_dataset",),
        "prompt_data_probs": ("data.prompt_probs",),
        "prompt_split": ("data.prompt_split",),
        # optimisers: the flat era had one set of flags for both models
        "actor_learning_rate": ("actor.adam.lr",),
        "critic_learning_rate": ("critic.adam.lr",),
        "l2": _both("adam.weight_decay"),
        "adam_betas": _both("adam.betas"),
        "lr_scheduler": _both("optim.lr_scheduler"),
        "lr_warmup_ratio": _both("optim.lr_warmup_ratio"),
        "min_lr_ratio": _both("optim.min_lr_ratio"),
        "max_norm": _both("optim.max_norm"),
        "max_epochs": ("algo.max_epochs",),  # PPO epochs per rollout batch, not passes over the data
        "max_epoch": ("algo.max_epochs",),
        "gradient_checkpointing": ("actor.gradient_checkpointing_enable",),
        "gradient_checkpointing_use_reentrant": ("actor.gradient_checkpointing_reentrant",),
        "aux_loss_coef": ("actor.aux_loss_coef",),
        "freeze_visual_encoder": ("actor.freeze_visual_encoder",),
        # resources (Ray)
        "actor_num_nodes": ("actor.num_nodes",),
        "actor_num_gpus_per_node": ("actor.num_gpus_per_node",),
        "critic_num_nodes": ("critic.num_nodes",),
        "critic_num_gpus_per_node": ("critic.num_gpus_per_node",),
        "ref_num_nodes": ("ref.num_nodes",),
        "ref_num_gpus_per_node": ("ref.num_gpus_per_node",),
        "reward_num_nodes": ("reward.num_nodes",),
        "reward_num_gpus_per_node": ("reward.num_gpus_per_node",),
        "ref_reward_offload": ("ref.offload", "reward.offload"),
        # vLLM
        "vllm_num_engines": ("vllm.num_engines",),
        "vllm_tensor_parallel_size": ("vllm.tensor_parallel_size",),
        "vllm_sync_backend": ("vllm.sync_backend",),
        "vllm_sync_with_ray": ("vllm.sync_with_ray",),
        "vllm_enable_sleep": ("vllm.enable_sleep",),
        "vllm_gpu_memory_utilization": ("vllm.gpu_memory_utilization",),
        "enable_prefix_caching": ("vllm.enable_prefix_caching",),
        "enforce_eager": ("vllm.enforce_eager",),
        "enable_vllm_is_correction": ("algo.advantage.is_correction_enable",),
        "vllm_is_truncated_threshold": ("algo.advantage.is_correction_threshold",),
        "vllm_is_correction_type": ("algo.advantage.is_correction_type",),
        "use_icepop": ("algo.advantage.is_correction_enable", "algo.advantage.is_correction_type=icepop"),
        # rollout
        "rollout_batch_size": ("rollout.batch_size",),
        "micro_rollout_batch_size": ("rollout.micro_batch_size",),
        "n_samples_per_prompt": ("rollout.n_samples_per_prompt",),
        "max_new_tokens": ("rollout.max_new_tokens",),
        "rollout_max_tokens_per_gpu": ("rollout.max_tokens_per_gpu",),
        "vllm_generate_batch_size": ("rollout.vllm_generate_batch_size",),
        "temperature": ("rollout.temperature",),
        "top_p": ("rollout.top_p",),
        "top_k": ("rollout.top_k",),
        "num_episodes": ("train.num_episodes",),
        # policy / value losses
        "eps_clip": ("actor.eps_clip",),
        "eps_clip_low_high": ("actor.eps_clip_low_high",),
        "dual_clip": ("actor.dual_clip",),
        "policy_loss_type": ("actor.policy_loss_type",),
        "entropy_loss_coef": ("actor.entropy_coef",),
        "value_clip": ("critic.value_clip",),
        "freezing_actor_steps": ("critic.freezing_steps",),
        "save_value_network": ("critic.save_value_network",),
        # advantages, KL, rewards
        "advantage_estimator": ("algo.advantage.estimator",),
        "gamma": ("algo.advantage.gamma",),
        "lambd": ("algo.advantage.lambd",),
        "no_advantage_std_norm": ("algo.advantage.no_std_norm",),
        "init_kl_coef": ("algo.kl.init_coef",),
        "kl_estimator": ("algo.kl.estimator",),
        "use_kl_loss": ("algo.kl.use_loss",),
        "kl_target": ("algo.kl.target",),
        "kl_horizon": ("algo.kl.horizon",),
        "dynamic_filtering": ("algo.dynamic_filtering_enable",),
        "dynamic_filtering_reward_range": ("algo.dynamic_filtering_range",),
        "normalize_reward": ("reward.normalize_enable",),
        "reward_clip_range": ("reward.clip_range",),
        "overlong_buffer_len": ("reward.overlong_buffer_len",),
        "overlong_penalty_factor": ("reward.overlong_penalty_factor",),
        "stop_properly_penalty_coef": ("reward.stop_properly_penalty_coef",),
        "eval_temperature": ("eval.temperature",),
        "eval_n_samples_per_prompt": ("eval.n_samples_per_prompt",),
        # 0.10.2 names that differ from ours
        "train.max_epochs": ("algo.max_epochs",),
        "actor.optim": ("actor.optim.name",),
        "actor.lr_scheduler": ("actor.optim.lr_scheduler",),
        "actor.lr_warmup_ratio": ("actor.optim.lr_warmup_ratio",),
        "actor.min_lr_ratio": ("actor.optim.min_lr_ratio",),
        "actor.max_norm": ("actor.optim.max_norm",),
        "actor.muon.no_nesterov": ("actor.muon.nesterov=false",),
        "critic.optim": ("critic.optim.name",),
        "critic.lr_scheduler": ("critic.optim.lr_scheduler",),
        "critic.lr_warmup_ratio": ("critic.optim.lr_warmup_ratio",),
        "critic.min_lr_ratio": ("critic.optim.min_lr_ratio",),
        "critic.max_norm": ("critic.optim.max_norm",),
        "critic.muon.no_nesterov": ("critic.muon.nesterov=false",),
        # RePULSe fork flags whose meaning does not depend on the mode (spec §7)
        "rm_max_len": ("reward.max_len",),
        "reward_cap": ("reward.cap",),
        "fit_steps": ("repulse.fit_steps",),
        "analytic_bad_word_calc": ("repulse.analytic_bad_word_calc",),
        "sampling_target_updated_base": ("repulse.p_first",),
        "threshold": ("repulse.transform_eta",),
        "save_negdata_threshold": ("repulse.negdata_threshold",),
        "heldout_prompt_data": ("eval.dataset",),
        "heldout_prompt_split": ("eval.split",),
    },
    ignored={
        # OpenRLHF placement and memory knobs
        "colocate_all_models": _PLACEMENT,
        "colocate_actor_ref": _PLACEMENT,
        "colocate_critic_reward": _PLACEMENT,
        "train.colocate_all": _PLACEMENT,
        "train.colocate_actor_ref": _PLACEMENT,
        "train.colocate_critic_reward": _PLACEMENT,
        "deepspeed_enable_sleep": _PLACEMENT,
        "ds.enable_sleep": _PLACEMENT,
        "use_dynamic_batch": _PLACEMENT,
        "train.dynamic_batch_enable": _PLACEMENT,
        "train_max_tokens_per_gpu": _PLACEMENT,
        "train.max_tokens_per_gpu": _PLACEMENT,
        "async_train": _ASYNC,
        "train.async_enable": _ASYNC,
        "async_queue_size": _ASYNC,
        "train.async_queue_size": _ASYNC,
        "partial_rollout": _ASYNC,
        "train.partial_rollout_enable": _ASYNC,
        **dict.fromkeys(
            ("best_metric_key", "ckpt.best_metric_key"),
            "best-checkpoint selection by an eval metric is not implemented; checkpoints rotate by step",
        ),
        "value_head_prefix": _HEAD,
        "value_prefix_head": _HEAD,
        "ds.value_head_prefix": _HEAD,
        "actor_init_on_gpu": _DEAD,
        "perf": _DEAD,
        "ptx_coef": _DEAD,
        "pretrain_data": _DEAD,
        # RePULSe fork: clutter (spec §6 "research clutter") and plumbing made implicit
        **dict.fromkeys(
            (
                "save_actor",
                "bc_coef",
                "bc_steps",
                "custom_single_prompt",
                "anneal_target_dist_beta",
                "start_target_dist_beta",
                "start_alpha",
                "separate_reweighting_beta",
                "uniform_reweight",
                "load_posterior_samples",
                "load_posterior_samples_name",
                "n_samples_for_f_q",
                "n_seeds_f_q",
                "update_steps_per_episode",
                "exp_num_twist_updates",
                "no_test_info",
                "test_info_every",
                "shared_actorcritic",
                "clamp_reward",
                "additional_sd_divider",
                "init_head_from_base",
                "neg_baseline_type",
                "reinforce_hardcoded_baseline",
                "neg_hardcoded_baseline",
                "evaluate_on_neg_data",
                "neg_data_load_path",
            ),
            _RESEARCH,
        ),
        "critic_loss_type": "the critic loss is the clipped squared error (the fork's only working choice, mse)",
        "model_eval": "log-probabilities are always computed with dropout off (spec §6 item 5)",
        "no_critic": "implied: only the gae estimator builds a critic",
        "gradient_accumulation_steps": "implied: accumulation = train.batch_size / (train.micro_batch_size x processes)",
        "save_info_path": "metrics and evaluation results are written to ckpt.output_dir",
        "new_custom_single_prompt": "the toy's single prompt comes from the prompt data set, which holds just that prompt",
    },
    unsupported={
        **dict.fromkeys(
            ("agent_func_path", "train.agent_func_path"), "multi-turn agent RL is not implemented"
        ),
        **dict.fromkeys(
            ("enable_ema", "ema_beta", "train.enable_ema", "train.ema_beta"),
            "EMA copies of the policy are not implemented",
        ),
        **dict.fromkeys(
            ("image_key", "max_images_per_prompt", "data.image_key", "data.max_images_per_prompt"),
            "vision-language RL is not implemented",
        ),
        **dict.fromkeys(
            ("lora_rank", "lora_alpha", "lora_dropout", "target_modules", "load_in_4bit")
            + (
                "ds.lora.rank",
                "ds.lora.alpha",
                "ds.lora.dropout",
                "ds.lora.target_modules",
                "ds.load_in_4bit",
            ),
            "LoRA/QLoRA is available for the offline trainers only (as in OpenRLHF's Ray PPO)",
        ),
        "only_evaluate_on_neg_data": "the fork's evaluation of stored bad sequences is not part of repulse (not in the paper)",
    },
    prefixes=(("ds.", "engine."),),
)

# ``serve_rm``: a reward model behind HTTP (``repulse.rl.reward_server``). --port/--host/--batch_size
# are the server's own flags and pass through; it reads the model's own dtype and attention choice.
_SERVE_RM_RUNTIME = "the reward server loads the model with its own dtype/attention/tokenizer choices"
_SERVE_RM = _Table(
    renames={
        "reward_pretrain": ("reward.model_name_or_path",),
        "pretrain": ("reward.model_name_or_path",),
        "normalize_reward": ("reward.normalize_enable",),
        "max_len": ("data.max_len",),
    },
    ignored={
        "local_rank": _LAUNCHER,
        "use_ms": _TRAIN_COMMON.ignored["use_ms"],
        "value_head_prefix": _HEAD,
        "ds.value_head_prefix": _HEAD,
        **dict.fromkeys(
            ("bf16", "param_dtype", "flash_attn", "attn_implementation", "packing_samples")
            + (
                "disable_fast_tokenizer",
                "data.disable_fast_tokenizer",
                "ds.param_dtype",
                "ds.attn_implementation",
            )
            + ("ds.packing_samples", "ds.experts_implementation"),
            _SERVE_RM_RUNTIME,
        ),
    },
    unsupported=dict.fromkeys(
        ("load_in_4bit", "ds.load_in_4bit"), "4-bit reward-model serving is not implemented"
    ),
)


# ``evaluate_gcg_sz`` (the RePULSe fork's GCG evaluation, spec §3.6) -> ``repulse gcg``. The policy
# (--ckpt_path / --pretrain), the threshold (--reward_threshold) and the success criterion are rules
# (``_gcg_rule``); the fork's store-true flags that defaulted to True (--gcg_use_prefix_cache,
# --gcg_filter_ids, spec §6.8) are booleans here, so ``--gcg.filter_ids false`` turns one off.
_GCG_NO_TRAINING = "a training knob; the attack runs forwards and one backward to the suffix only"
_GCG = _Table(
    renames={
        "gcg_steps": ("gcg.steps",),
        "gcg_search_width": ("gcg.search_width",),
        "gcg_topk": ("gcg.topk",),
        "gcg_batch_size": ("gcg.batch_size",),
        "gcg_n_replace": ("gcg.n_replace",),
        "gcg_buffer_size": ("gcg.buffer_size",),
        "gcg_use_prefix_cache": ("gcg.use_prefix_cache",),
        "gcg_filter_ids": ("gcg.filter_ids",),
        "file_path": ("gcg.targets",),
        "max_targets": ("gcg.max_targets",),
        "rm_exclude_adv_suffix": ("gcg.exclude_suffix_from_reward",),
        "samples_per_prompt": ("rollout.n_samples_per_prompt",),
        "max_new_tokens": ("rollout.max_new_tokens",),
        "reward_pretrain": ("reward.model_name_or_path",),
        "rm_max_len": ("reward.max_len",),
        "seed": ("train.seed",),
        "bf16": ("engine.param_dtype=bf16",),
        "flash_attn": ("engine.attn_implementation=flash_attention_2",),
    },
    ignored={
        "local_rank": _LAUNCHER,
        **dict.fromkeys(
            ("zero_stage", "gradient_checkpointing", "adam_offload", "micro_train_batch_size"),
            _GCG_NO_TRAINING,
        ),
        **dict.fromkeys(("parameterization", "scenario"), _RESEARCH),
    },
)

# Flags of the GCG command whose destination or value is derived by ``_gcg_rule`` (for tests).
GCG_RULE_FLAGS: frozenset[str] = frozenset(
    {"ckpt_path", "pretrain", "reward_threshold", "atk_success_criteria"}
)


def _tables(command: str) -> tuple[_Table, ...]:
    """The scopes searched for ``command``, most specific first."""
    if command == "rl":
        return (_RL, _TRAIN_COMMON)
    if command == "serve-rm":
        return (_SERVE_RM,)
    if command == "gcg":
        return (_GCG,)
    return (_OFFLINE, _TRAIN_COMMON)


# Flags that exist only in the RePULSe fork (spec §7). Any of them marks a command as the
# fork's, which switches on the mode-dependent rules below. Generic sampler/scheduler flags
# that the fork merely re-added (--top_k, --lr_scheduler, --gradient_accumulation_steps) do not.
FORK_FLAGS: frozenset[str] = frozenset(
    {
        "save_actor", "save_steps_harmless", "fit_steps", "rm_max_len", "bc_coef", "bc_steps",
        "duplicate_rollout_batch_by", "base_actor_learning_rate", "alpha", "rew_trans_alpha",
        "rew_trans_beta", "custom_single_prompt", "new_custom_single_prompt", "heldout_prompt_data",
        "heldout_prompt_split", "heldout_input_key", "heldout_input_template", "rm_type", "threshold",
        "reward_cap", "save_negdata", "save_negdata_threshold", "target_dist_beta",
        "anneal_target_dist_beta", "start_target_dist_beta", "start_alpha", "separate_reweighting_beta",
        "uniform_reweight", "load_posterior_samples", "load_posterior_samples_name", "save_info_path",
        "n_samples_for_f_q", "n_seeds_f_q", "update_steps_per_episode", "exp_num_twist_updates",
        "no_test_info", "test_info_every", "parameterization", "shared_actorcritic", "model_eval",
        "no_critic", "clamp_reward", "additional_sd_divider", "init_head_from_base", "actor_loss_type",
        "critic_loss_type", "reward_transform", "do_harmlessness_training",
        "harmlessness_training_num_episodes", "harmlessness_training_episodes_per_loop",
        "sampling_target_updated_base", "use_base_as_proposal", "only_evaluate_on_neg_data",
        "neg_data_load_path", "evaluate_heldout_sampling", "evaluate_on_neg_data",
        "analytic_bad_word_calc", "sampling_iters", "harmlessness_training_loss_type",
        "reinforce_baseline_type", "neg_baseline_type", "reinforce_hardcoded_baseline",
        "neg_hardcoded_baseline",
    }
)  # fmt: skip

# Flags whose destination depends on other flags or whose value is transformed (handled by the
# rules below, never by the plain table). Tests use this to know which values are rewritten.
RULE_FLAGS: frozenset[str] = frozenset(
    {
        "prompt_max_len", "generate_max_len",
        # the fork's mode switches and the flags whose meaning they change
        "do_harmlessness_training", "harmlessness_training_loss_type", "use_base_as_proposal",
        "reward_transform", "actor_loss_type", "reinforce_baseline_type", "parameterization", "rm_type",
        "target_dist_beta", "alpha", "rew_trans_alpha", "rew_trans_beta",
        "base_actor_learning_rate", "actor_learning_rate", "critic_learning_rate",
        "duplicate_rollout_batch_by", "n_samples_per_prompt", "micro_rollout_batch_size",
        "num_episodes", "harmlessness_training_num_episodes", "harmlessness_training_episodes_per_loop",
        "save_steps", "save_steps_harmless", "save_negdata",
        "evaluate_heldout_sampling", "sampling_iters", "heldout_input_key", "heldout_input_template",
    }
)  # fmt: skip

# Old OpenRLHF (<=0.9.6) split the length budget in two; 1024 was the default of each.
_OLD_PROMPT_MAX_LEN = 1024
_OLD_GENERATE_MAX_LEN = 1024


# --------------------------------------------------------------------------- parsing argv


@dataclass
class _Flag:
    """One ``--name [values...]`` group of argv, or a stray token (name None)."""

    name: str | None
    values: list[str]
    raw: list[str]
    eq: bool = False  # written as --name=value


def _is_flag(tok: str) -> bool:
    """Same rule as the parser: ``--x``; negative numbers (``-10``) and ``-`` are values."""
    return tok.startswith("--") and len(tok) > 2


def _group(argv: list[str]) -> list[_Flag]:
    out: list[_Flag] = []
    for tok in argv:
        if _is_flag(tok):
            name, eq, value = tok[2:].partition("=")
            if "." not in name:
                name = name.replace("-", "_")
            out.append(_Flag(name, [value] if eq else [], [tok], bool(eq)))
        elif out and out[-1].name is not None:
            out[-1].values.append(tok)
            out[-1].raw.append(tok)
        else:
            out.append(_Flag(None, [tok], [tok]))
    return out


@dataclass
class _Ctx:
    """Read-only view of the legacy argv for the value-dependent rules."""

    flags: list[_Flag]
    fork: bool = False

    def has(self, *names: str) -> bool:
        return any(f.name in names for f in self.flags)

    def get(self, *names: str) -> list[str] | None:
        """Values of the last occurrence of any of ``names`` (``[]`` for a bare switch), else None."""
        found = None
        for f in self.flags:
            if f.name in names:
                found = f.values
        return found

    def one(self, *names: str) -> str | None:
        vals = self.get(*names)
        if vals is None or not vals:
            return None
        if len(vals) != 1:
            raise UserError(f"--{names[0]} takes one value, got {' '.join(vals)!r}.")
        return vals[0]

    def integer(self, name: str, default: int) -> int:
        val = self.one(name)
        if val is None:
            return default
        try:
            return int(float(val))
        except ValueError:
            raise UserError(f"--{name} expects an integer, got {val!r}.") from None


@dataclass
class _Out:
    """What the rules produce: flags in our names, consumed legacy names, notes, ignored flags."""

    emitted: list[tuple[str, list[str]]] = field(default_factory=list)
    consumed: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def emit(self, dest: str, *values: str) -> None:
        self.emitted.append((dest, list(values)))

    def ignore(self, name: str, reason: str) -> None:
        self.consumed.add(name)
        self.ignored.setdefault(name, reason)


# --------------------------------------------------------------------------- value rules


def flip_sign(value: str) -> str:
    """Negate a number written as text, keeping its spelling (``-10`` -> ``10``, ``0.1`` -> ``-0.1``).

    The fork writes the target's inverse temperature and the transform's exponent as
    negative numbers (β_c < 0); repulse uses the paper's positive β, so both flip.
    """
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"expected a number, got {value!r}.") from None
    if number == 0:
        return value.lstrip("+-")
    if value.startswith("-"):
        return value[1:]
    return "-" + value.lstrip("+")


def _lengths_rule(ctx: _Ctx, out: _Out) -> None:
    """``--prompt_max_len P --generate_max_len G`` (<=0.9.6): total ``data.max_len`` = P + G.

    The old CLI budgeted the prompt and the response separately; ours has one total and a
    response cap. An explicit ``--max_len``/``--data.max_len`` wins over the sum.
    """
    if not ctx.has("prompt_max_len", "generate_max_len"):
        return
    out.consumed |= {"prompt_max_len", "generate_max_len"}
    prompt = ctx.integer("prompt_max_len", _OLD_PROMPT_MAX_LEN)
    generate = ctx.integer("generate_max_len", _OLD_GENERATE_MAX_LEN)
    if ctx.has("generate_max_len"):
        out.emit("rollout.max_new_tokens", str(generate))
    if ctx.has("max_len", "data.max_len"):
        if ctx.has("prompt_max_len"):
            out.ignore("prompt_max_len", "superseded by the total --max_len given alongside")
        return
    out.emit("data.max_len", str(prompt + generate))
    out.notes.append(
        f"--prompt_max_len {prompt} --generate_max_len {generate} -> --data.max_len {prompt + generate} "
        f"--rollout.max_new_tokens {generate} (one total length budget, prompt + response)."
    )


def _critic_from_reward_rule(ctx: _Ctx, out: _Out) -> None:
    """Upstream PPO (gae) without a critic path started the critic from the (first) reward model.

    Our default is the actor, so the hidden default is made explicit (spec §2.2 item 3).
    """
    estimator = ctx.one("advantage_estimator", "algo.advantage.estimator") or "gae"
    reward = ctx.one("reward_pretrain", "reward.model_name_or_path")
    if estimator != "gae" or reward is None:
        return
    if ctx.has("critic_pretrain", "critic.model_name_or_path", "remote_rm_url", "reward.remote_url"):
        return
    first = reward.split(",")[0]
    out.emit("critic.model_name_or_path", first)
    out.notes.append(
        f"OpenRLHF initialised the PPO critic from the reward model: --critic.model_name_or_path {first}."
    )


# RePULSe fork: (--harmlessness_training_loss_type, --use_base_as_proposal) -> method (spec §1.5).
_HARMLESS_METHODS: dict[tuple[str, bool], str] = {
    ("reinforce", False): "reinforce",
    ("reinforce", True): "reinforce",  # the proposal flag has no effect without the negative term
    ("neg_training", False): "repulse",
    ("neg_training", True): "p_proposal",
}
# --reinforce_baseline_type -> our estimator of the REINFORCE term L_r.
_BASELINE_ESTIMATORS: dict[str | None, str] = {"expectation": "rloo", None: "reinforce"}
_FORK_MODE_FLAGS = (
    "do_harmlessness_training",
    "harmlessness_training_loss_type",
    "use_base_as_proposal",
    "reward_transform",
    "actor_loss_type",
    "reinforce_baseline_type",
)
_TRANSFORMS = ("minus_alpha_exp_beta_r", "minus_alpha_ind")


def _derive_method(ctx: _Ctx) -> tuple[str, str | None, str]:
    """The fork's mode flags -> (``repulse.method``, ``repulse.reward_transform``, estimator).

    The fork picks its algorithm from a combination of five flags (spec §1.5): PPO without
    ``--do_harmlessness_training``; otherwise the LM loss type, the reward transform and
    ``--use_base_as_proposal`` choose REINFORCE, reward-transformed REINFORCE, the
    p-proposal ablation or RePULSe. Combinations the paper never ran are refused.
    """
    actor_loss = ctx.one("actor_loss_type") or "ppo"
    transform = ctx.one("reward_transform")
    if transform is not None and transform not in _TRANSFORMS:
        raise UserError(f"--reward_transform {transform}: repulse implements {' and '.join(_TRANSFORMS)}.")
    if not ctx.has("do_harmlessness_training"):
        if actor_loss != "ppo":
            raise UserError(
                f"--actor_loss_type {actor_loss} without --do_harmlessness_training trains only a proposal "
                "(the fork's twisted-SMC experiments); repulse does not have that mode."
            )
        if transform is not None:
            raise UserError(
                "--reward_transform is implemented for the REINFORCE baseline "
                "(--do_harmlessness_training --harmlessness_training_loss_type reinforce), not for PPO."
            )
        return "rl", None, "gae"
    loss_type = ctx.one("harmlessness_training_loss_type")
    use_base = ctx.has("use_base_as_proposal")
    if (loss_type or "", use_base) not in _HARMLESS_METHODS:
        raise UserError(
            f"--harmlessness_training_loss_type {loss_type}: repulse implements 'reinforce' and 'neg_training' "
            "(neg_reinforce was a negative result in the paper, App. C.2)."
        )
    method = _HARMLESS_METHODS[(loss_type, use_base)]
    if transform is not None:
        if method != "reinforce":
            raise UserError(
                "--reward_transform inside RePULSe (neg_training) is not supported (paper App. D.5)."
            )
        method = "reward_transform"
    if method == "repulse" and actor_loss != "ctl":
        raise UserError(
            f"--actor_loss_type {actor_loss}: RePULSe's proposal is trained with the CTL loss (ctl)."
        )
    baseline = ctx.one("reinforce_baseline_type")
    if baseline not in _BASELINE_ESTIMATORS:
        raise UserError(
            f"--reinforce_baseline_type {baseline}: repulse implements 'expectation' (RLOO) or no baseline."
        )
    return method, transform, _BASELINE_ESTIMATORS[baseline]


def _fork_rule(ctx: _Ctx, out: _Out) -> None:
    """All mode-dependent translations of a RePULSe-fork command (spec §1.5-§1.7, §7)."""
    method, transform, estimator = _derive_method(ctx)
    out.consumed.update(_FORK_MODE_FLAGS)
    out.emit("repulse.method", method)
    if transform is not None:
        out.emit("repulse.reward_transform", transform)
    given = [f"--{n}" + (f" {ctx.one(n)}" if ctx.get(n) else "") for n in _FORK_MODE_FLAGS if ctx.has(n)]
    derived = f"--repulse.method {method}" + (f" --repulse.reward_transform {transform}" if transform else "")
    if not ctx.has("advantage_estimator", "algo.advantage.estimator"):
        out.emit("algo.advantage.estimator", estimator)
        derived += f" --algo.advantage.estimator {estimator}"
    out.notes.append(f"RePULSe fork mode {' '.join(given) or '(PPO by default)'} -> {derived}.")
    if estimator == "reinforce" and method != "rl":
        out.notes.append(
            "no --reinforce_baseline_type: the closest estimator is REINFORCE++ ('reinforce', normalised "
            "returns); the fork used raw returns."
        )
    _fork_checks(ctx, out)
    _fork_beta_alpha(ctx, out, method, transform)
    _fork_learning_rates(ctx, out, method)
    group = _fork_sampling(ctx, out)
    _fork_episodes(ctx, out, method)
    _fork_checkpoints(ctx, out, method)
    _fork_heldout_eval(ctx, out, group)
    _fork_negdata(ctx, out)
    _fork_defaults(ctx, out, method)


_PARAMETERIZATIONS = ("policy", "policy_psi_q_p_s_t")


def _fork_checks(ctx: _Ctx, out: _Out) -> None:
    """``--rm_type``/``--parameterization``: accept the values the paper used, refuse the rest."""
    rm_type = ctx.one("rm_type")
    if rm_type is not None and rm_type != "rlhf":
        raise UserError(
            f"--rm_type {rm_type}: repulse scores with the raw reward (the paper's rm_type rlhf)."
        )
    if ctx.has("rm_type"):
        out.ignore("rm_type", "the raw reward score is used, as with the paper's rm_type rlhf")
    else:
        out.notes.append(
            "no --rm_type: the fork's default (exp_beta_toxicity_class_logprob) turned the score into a class "
            "log-probability; repulse uses the raw reward (rm_type rlhf, as in every paper run)."
        )
    param = ctx.one("parameterization")
    if param is not None and param not in _PARAMETERIZATIONS:
        raise UserError(
            f"--parameterization {param}: repulse implements the paper's policy_psi_q_p_s_t only."
        )
    if ctx.has("parameterization"):
        out.ignore(
            "parameterization", "the proposal is always a full LM with psi = q/p per token, as in the paper"
        )


def _fork_beta_alpha(ctx: _Ctx, out: _Out, method: str, transform: str | None) -> None:
    """β, α and the reward-transform (a, b): sign flips and the fork's shared defaults.

    The fork's β_c < 0 gives σ ∝ p·exp(β_c·r); ours is the paper's β = −β_c > 0. Its
    transform r − a·exp(b_c·r) takes a from ``--rew_trans_alpha`` (default ``--alpha``) and
    b_c from ``--rew_trans_beta`` (default ``--target_dist_beta``); ours is r − a·exp(−b·r)
    with b = −b_c. Flags a method never reads are reported as ignored.
    """
    names = ("target_dist_beta", "alpha", "rew_trans_alpha", "rew_trans_beta")
    out.consumed.update(names)
    beta_c, alpha = ctx.one("target_dist_beta"), ctx.one("alpha")
    used: set[str] = set()
    if method in ("repulse", "p_proposal"):
        if beta_c is not None:
            out.emit("repulse.beta", flip_sign(beta_c))
            out.notes.append(
                f"--target_dist_beta {beta_c} -> --repulse.beta {flip_sign(beta_c)} (sign flipped: the fork's "
                "beta_c < 0 is the paper's beta > 0 in sigma ∝ p·exp(-beta·r))."
            )
        if alpha is not None:
            out.emit("repulse.alpha", alpha)
        used |= {"target_dist_beta", "alpha"}
    elif method == "reward_transform":
        a = ctx.one("rew_trans_alpha") or alpha
        b_c = ctx.one("rew_trans_beta") or beta_c
        used |= {"rew_trans_alpha" if ctx.has("rew_trans_alpha") else "alpha"}
        if a is not None:
            out.emit("repulse.transform_a", a)
        if transform == "minus_alpha_exp_beta_r" and b_c is not None:
            used |= {"rew_trans_beta" if ctx.has("rew_trans_beta") else "target_dist_beta"}
            out.emit("repulse.transform_b", flip_sign(b_c))
            out.notes.append(
                f"reward transform r - a·exp(b_c·r) with a={a}, b_c={b_c} -> --repulse.transform_a {a} "
                f"--repulse.transform_b {flip_sign(b_c)} (ours is r - a·exp(-b·r), b = -b_c)."
            )
    for name in names:
        if ctx.has(name) and name not in used:
            out.ignore(name, f"not used by method '{method}'")


def _fork_learning_rates(ctx: _Ctx, out: _Out, method: str) -> None:
    """The fork's three learning rates change roles with the mode (spec §1.6).

    PPO mode: ``--actor_learning_rate`` is the policy's, ``--critic_learning_rate`` the
    critic's. RePULSe mode: ``--base_actor_learning_rate`` is the LM p's and
    ``--actor_learning_rate`` the proposal q's; there is no critic.
    """
    names = ("actor_learning_rate", "critic_learning_rate", "base_actor_learning_rate")
    out.consumed.update(names)
    actor, critic, base = (ctx.one(n) for n in names)
    if method == "rl":
        if actor is not None:
            out.emit("actor.adam.lr", actor)
        if critic is not None:
            out.emit("critic.adam.lr", critic)
        if base is not None:
            out.ignore("base_actor_learning_rate", "used only with --do_harmlessness_training")
        return
    if base is not None:
        out.emit("actor.adam.lr", base)
    if base is not None:
        out.notes.append(
            f"--base_actor_learning_rate {base} is the LM p's lr here -> --actor.adam.lr {base}."
        )
    if method == "repulse" and actor is not None:
        out.emit("repulse.proposal_lr", actor)
        out.notes.append(
            f"--actor_learning_rate {actor} is the proposal q's lr here -> --repulse.proposal_lr {actor}."
        )
    elif actor is not None:
        out.ignore("actor_learning_rate", f"the proposal q's lr; method '{method}' builds no proposal")
    if critic is not None:
        out.ignore("critic_learning_rate", f"method '{method}' has no critic")


def _fork_sampling(ctx: _Ctx, out: _Out) -> int:
    """Group size and micro-batches: the fork counts prompts where ours counts samples.

    ``--duplicate_rollout_batch_by N`` tiles each prompt N times (our
    ``rollout.n_samples_per_prompt``; the fork asserted its own ``--n_samples_per_prompt`` to
    be 1, so the product is the group size). ``--micro_rollout_batch_size P`` is P prompts,
    i.e. P·N samples per generation micro-batch. Returns N.
    """
    out.consumed |= {"duplicate_rollout_batch_by", "n_samples_per_prompt", "micro_rollout_batch_size"}
    group = ctx.integer("duplicate_rollout_batch_by", 1) * ctx.integer("n_samples_per_prompt", 1)
    if ctx.has("duplicate_rollout_batch_by", "n_samples_per_prompt"):
        out.emit("rollout.n_samples_per_prompt", str(group))
    if ctx.has("micro_rollout_batch_size"):
        prompts = ctx.integer("micro_rollout_batch_size", 1)
        out.emit("rollout.micro_batch_size", str(prompts * group))
        out.notes.append(
            f"--micro_rollout_batch_size {prompts} counted prompts in the fork; repulse counts samples: "
            f"--rollout.micro_batch_size {prompts * group} ({prompts} prompts x {group} samples)."
        )
    return group


def _fork_episodes(ctx: _Ctx, out: _Out, method: str) -> None:
    """Passes over the prompts: ``--num_episodes`` in PPO mode; in RePULSe mode it is N_q.

    With ``--do_harmlessness_training`` the passes are ``--harmlessness_training_num_episodes``
    (times the redundant ``..._episodes_per_loop``) and ``--num_episodes`` becomes the number
    of q updates per p update (spec §1.7).
    """
    names = ("num_episodes", "harmlessness_training_num_episodes", "harmlessness_training_episodes_per_loop")
    out.consumed.update(names)
    episodes = ctx.one("num_episodes")
    if method == "rl":
        if episodes is not None:
            out.emit("train.num_episodes", episodes)
        for name in names[1:]:
            if ctx.has(name):
                out.ignore(name, "used only with --do_harmlessness_training")
        return
    if ctx.has(*names[1:]):
        passes = ctx.integer(names[1], 1) * ctx.integer(names[2], 1)
        out.emit("train.num_episodes", str(passes))
    if episodes is None:
        return
    if method == "repulse":
        out.emit("repulse.q_updates_per_step", episodes)
        out.notes.append(
            f"RePULSe mode: --num_episodes {episodes} is the number of q updates per p update -> "
            f"--repulse.q_updates_per_step {episodes}; passes over the prompts come from "
            "--harmlessness_training_num_episodes (--train.num_episodes)."
        )
    else:
        out.ignore("num_episodes", f"q updates per p update; method '{method}' has no proposal")


def _fork_checkpoints(ctx: _Ctx, out: _Out, method: str) -> None:
    """``--save_steps_harmless`` saved p in RePULSe mode (``--save_steps`` saved q); PPO used ``--save_steps``."""
    out.consumed |= {"save_steps", "save_steps_harmless"}
    steps, harmless = ctx.one("save_steps"), ctx.one("save_steps_harmless")
    main, other = (steps, "save_steps_harmless") if method == "rl" else (harmless, "save_steps")
    if main is not None:
        out.emit("ckpt.save_steps", main)
    if ctx.has(other):
        reason = (
            "used only with --do_harmlessness_training"
            if method == "rl"
            else "the proposal's own checkpoints; every repulse checkpoint holds the whole training state"
        )
        out.ignore(other, reason)


def _fork_heldout_eval(ctx: _Ctx, out: _Out, group: int) -> None:
    """Held-out sampling after training: N·k samples per prompt at the training temperature.

    The fork drew ``--duplicate_rollout_batch_by`` samples per held-out prompt in each of
    ``--sampling_iters`` passes, with the training sampler. The held-out key/template must
    match the training ones: repulse reads both sets with ``data.input_key``/``input_template``.
    """
    out.consumed |= {
        "evaluate_heldout_sampling",
        "sampling_iters",
        "heldout_input_key",
        "heldout_input_template",
    }
    for name, ours, default in (
        ("heldout_input_key", ("input_key", "data.input_key"), DataSection().input_key),
        ("heldout_input_template", ("input_template", "data.input_template"), DataSection().input_template),
    ):
        value = ctx.one(name)
        if value is None:
            continue
        train_value = ctx.one(*ours) if ctx.has(*ours) else default
        if value != train_value:
            raise UserError(
                f"--{name} {value!r} differs from the training prompts' {train_value!r}: repulse reads the "
                f"held-out prompts with --data.{ours[0]}; give both files the same key/template."
            )
        out.ignore(
            name, "same as the training prompts'; repulse reads both with data.input_key/input_template"
        )
    if not ctx.has("evaluate_heldout_sampling"):
        if ctx.has("sampling_iters"):
            out.ignore("sampling_iters", "used only with --evaluate_heldout_sampling")
        return
    passes = ctx.integer("sampling_iters", 1)
    temperature = ctx.one("temperature", "rollout.temperature") or str(RolloutSection().temperature)
    out.emit("eval.n_samples_per_prompt", str(group * passes))
    out.emit("eval.temperature", temperature)
    out.notes.append(
        f"--evaluate_heldout_sampling --sampling_iters {passes}: --eval.n_samples_per_prompt {group * passes} "
        f"(duplicate_rollout_batch_by x sampling_iters) --eval.temperature {temperature} (the training sampler)."
    )


def _fork_negdata(ctx: _Ctx, out: _Out) -> None:
    """``--save_negdata`` was a switch writing a pickle under ``--save_path``; ours takes a file path."""
    out.consumed.add("save_negdata")
    values = ctx.get("save_negdata")
    if values is None:
        return
    if values:
        out.emit("repulse.save_negdata", values[0])
        return
    base = ctx.one("save_path", "ckpt.output_dir") or CkptSection().output_dir
    path = base.rstrip("/") + "/negdata.jsonl"
    out.emit("repulse.save_negdata", path)
    out.notes.append(
        f"--save_negdata -> --repulse.save_negdata {path} (JSON lines instead of the fork's pickle)."
    )


# Defaults of the fork that differ from ours and change results (spec §1.5, §7, §4.2).
_FORK_DEFAULTS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    # (flags that set it, our field, the fork's default, which methods)
    (("init_kl_coef", "algo.kl.init_coef"), "algo.kl.init_coef", "1", "all"),
    (("lambd", "algo.advantage.lambd"), "algo.advantage.lambd", "0.95", "rl"),
    (("value_clip", "critic.value_clip"), "critic.value_clip", "0.2", "rl"),
    (("bf16", "param_dtype", "ds.param_dtype", "engine.param_dtype"), "engine.param_dtype", "fp32", "all"),
)


def _fork_defaults(ctx: _Ctx, out: _Out, method: str) -> None:
    """Make the fork's own defaults explicit where ours differ (fp32 weights, λ_GAE 0.95, ...)."""
    made = []
    for flags, dest, value, methods in _FORK_DEFAULTS:
        if (methods == "all" or methods == method) and not ctx.has(*flags):
            out.emit(dest, value)
            made.append(f"--{dest} {value}")
    if made:
        out.notes.append(f"the fork's defaults made explicit: {' '.join(made)}.")


# The RePULSe fork chose how to feed its reward model from the model's name (spec §1.8).
_RM_INPUT_FORMATS = (("deberta", "pair"), ("skywork", "chat"))


def _reward_format_rule(ctx: _Ctx, out: _Out) -> None:
    """The fork scored a DeBERTa RM on (question, answer) pairs and a Skywork RM through its own
    chat template (both on the raw question, not the policy's rendered prompt); every other RM
    (e.g. the toy's ToxicityModel) on the whole text. Made explicit from ``--reward_pretrain``'s
    name; an explicit ``--reward.input_format`` wins."""
    reward = ctx.one("reward_pretrain", "reward.model_name_or_path")
    if reward is None or ctx.has("reward.input_format"):
        return
    name = reward.split(",")[0].lower()
    for key, fmt in _RM_INPUT_FORMATS:
        if key in name:
            out.emit("reward.input_format", fmt)
            out.notes.append(
                f"the reward model {reward.split(',')[0]} is scored as the fork scored it: "
                f"--reward.input_format {fmt} (on the raw question)."
            )
            return


def _gcg_rule(ctx: _Ctx, out: _Out) -> None:
    """The fork's GCG evaluation: which model, which thresholds, which success criterion.

    * ``--ckpt_path`` held the DeepSpeed weights loaded into ``--pretrain``'s architecture;
      repulse attacks an HF directory, so ``--ckpt_path`` (a repulse run's output directory)
      becomes ``--gcg.policy``, else ``--pretrain`` does.
    * ``--reward_threshold x`` counted samples below x *and* below x - 1, and the paper's
      figures used x - 1 (the README's "x - 1" hack, spec §3.6, §6.14); both become
      ``--gcg.eta x x-1``. Every reward is saved, so any η can be read later.
    * ``--atk_success_criteria reward`` is the only criterion (``prefix`` crashed, spec §6.7).
    """
    out.consumed |= GCG_RULE_FLAGS
    ckpt, pretrain = ctx.one("ckpt_path"), ctx.one("pretrain")
    if ckpt is not None:
        out.emit("gcg.policy", ckpt)
        out.notes.append(
            f"--ckpt_path {ckpt} -> --gcg.policy {ckpt}: give the HF model directory of the trained policy "
            "(a repulse run's --ckpt.output_dir), not a DeepSpeed checkpoint."
        )
        if pretrain is not None:
            out.ignore("pretrain", "the architecture and tokenizer come from --ckpt_path's HF directory")
    elif pretrain is not None:
        out.emit("gcg.policy", pretrain)
    threshold = ctx.one("reward_threshold")
    if threshold is not None:
        try:
            x = float(threshold)
        except ValueError:
            raise UserError(f"--reward_threshold expects a number, got {threshold!r}.") from None
        out.emit("gcg.eta", threshold, f"{x - 1:g}")
        out.notes.append(
            f"--reward_threshold {threshold} -> --gcg.eta {threshold} {x - 1:g}: the fork reported successes "
            f"below x and below x - 1, and its figures used x - 1 (= {x - 1:g}); every sample's reward is "
            "saved, so any threshold can be applied later (repulse gcg report, repulse plot)."
        )
    criterion = ctx.one("atk_success_criteria")
    if criterion is not None and criterion != "reward":
        raise UserError(
            f"--atk_success_criteria {criterion}: repulse measures attack success by reward (some sample "
            "with r < eta); the fork's refusal-prefix criterion crashed (spec §6.7) and is not implemented."
        )
    if criterion is not None:
        out.ignore("atk_success_criteria", "success is always: some sample has reward below eta")
    if not ctx.has("top_k", "rollout.top_k"):
        out.notes.append(
            "samples are drawn with the training sampler (--rollout.temperature/top_p/top_k, top-k off by "
            "default); the fork's GCG sampler implied HF's default top-k 50 (spec §6.6) - add "
            "--rollout.top_k 50 to reproduce that."
        )


# command -> rules applied before the table, in order
_RULES = {"rl": (_lengths_rule, _reward_format_rule), "gcg": (_reward_format_rule, _gcg_rule)}


# --------------------------------------------------------------------------- public API


def translate_argv(argv: list[str], command: str) -> tuple[list[str], list[str]]:
    """Rewrite seed-document flags in ``argv`` into repulse's dotted flags.

    Returns ``(new_argv, notes)``: the notes say what was derived (method, sign flips,
    size conversions), what was renamed, and - in one note - which flags were accepted and
    ignored. Flags already in our names, ``--config``/``--dry-run`` and unknown flags pass
    through untouched. Flags derived from several legacy flags come first, so a flag the
    user writes in our names still wins. Raises ``UserError`` for seed flags whose feature
    repulse does not have, and for RePULSe-fork mode combinations it does not implement.
    """
    if command not in COMMANDS:
        return argv, []  # a command the seed documents never had (eval-tail, lora-merge, ...)
    flags = _group(argv)
    ctx = _Ctx(flags)
    ctx.fork = command == "rl" and ctx.has(*FORK_FLAGS)
    out = _Out()
    for rule in _RULES.get(command, ()):
        rule(ctx, out)
    if ctx.fork:
        _fork_rule(ctx, out)
    elif command == "rl":
        _critic_from_reward_rule(ctx, out)

    tables = _tables(command)
    new: list[str] = []
    for dest, values in out.emitted:
        new += [f"--{dest}", *values]
    renamed: dict[str, str] = {}
    unsupported: dict[str, str] = {}
    for f in flags:
        if f.name is None:
            new += f.raw
            continue
        if f.name in out.consumed:
            continue
        hit = _lookup(f.name, tables)
        if hit is None:
            new += f.raw
        elif hit[0] == "ignored":
            out.ignore(f.name, hit[1])
        elif hit[0] == "unsupported":
            unsupported[f.name] = hit[1]
        else:
            dests = hit[1]
            new += _emit_renamed(f, dests)
            renamed[f.name] = " ".join("--" + d.partition("=")[0] + _const_suffix(d) for d in dests)
    if unsupported:
        listed = "; ".join(f"--{n}: {why}" for n, why in unsupported.items())
        raise UserError(f"these seed flags name features repulse does not have: {listed}.")

    notes = list(out.notes)
    if renamed:
        pairs = ", ".join(f"--{old} -> {new_}" for old, new_ in renamed.items())
        notes.append(f"translated {len(renamed)} seed flag(s) to repulse names: {pairs}.")
    if out.ignored:
        notes.append(_ignored_note(out.ignored))
    return new, notes


def table_destinations(name: str, command: str) -> Dest | None:
    """Where the table sends ``--name`` for ``command`` (``"a.b=v"`` for a constant), or None.

    None also for ignored, refused and unknown flags. Value-dependent rules are not consulted.
    """
    hit = _lookup(name, _tables(command))
    return hit[1] if hit is not None and hit[0] == "rename" else None  # type: ignore[return-value]


def _const_suffix(dest: str) -> str:
    _, eq, const = dest.partition("=")
    return f" {const}" if eq else ""


def _lookup(name: str, tables: tuple[_Table, ...]) -> tuple[str, object] | None:
    """Exact entries of every scope first (most specific scope first), then prefix renames."""
    for table in tables:
        if name in table.renames:
            return "rename", table.renames[name]
        if name in table.ignored:
            return "ignored", table.ignored[name]
        if name in table.unsupported:
            return "unsupported", table.unsupported[name]
    for table in tables:
        for old, new in table.prefixes:
            if name.startswith(old):
                return "rename", (new + name[len(old) :],)
    return None


def _emit_renamed(f: _Flag, dests: Dest) -> list[str]:
    """Tokens for one renamed flag: its values verbatim (``--x=v`` stays one token), or the constant."""
    tokens: list[str] = []
    for dest in dests:
        name, eq, const = dest.partition("=")
        if eq:
            tokens += [f"--{name}", const]
        elif f.eq:
            tokens.append(f"--{name}={f.values[0]}")
        else:
            tokens += [f"--{name}", *f.values]
    return tokens


def _ignored_note(ignored: dict[str, str]) -> str:
    """One note for every accepted-and-ignored flag, grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in ignored.items():
        by_reason.setdefault(reason, []).append(f"--{name}")
    parts = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())
    return f"ignored {len(ignored)} seed flag(s) with no effect in repulse: {parts}."


def split_launcher(tokens: list[str]) -> tuple[str, list[str]]:
    """``deepspeed ... --module openrlhf.cli.train_X ARGS`` (or ``python -m``, ``ray job submit -- ...``).

    Returns ``(our command, ARGS)``: everything after the first ``openrlhf.cli.<module>`` token.
    """
    for i, tok in enumerate(tokens):
        if tok.startswith("openrlhf.cli."):
            module = tok[len("openrlhf.cli.") :]
            if module not in MODULE_TO_COMMAND:
                known = ", ".join(sorted(MODULE_TO_COMMAND))
                raise UserError(
                    f"openrlhf.cli.{module} has no repulse counterpart to translate to (known: {known})."
                )
            return MODULE_TO_COMMAND[module], tokens[i + 1 :]
    raise UserError("no 'openrlhf.cli.<module>' in the command: cannot tell which trainer it runs.")
