"""The translation tables: every seed-document flag and where it goes (``repulse.config.legacy``).

One table per group of commands (training in general, offline, RL, the reward server, GCG). An
entry maps a legacy flag (old flat name, 0.10.2 ``--ds.*`` name, RePULSe-fork name) to our dotted
destination(s), or marks it accepted-and-ignored with the reason the note gives, or unsupported.
Flags whose translation depends on other flags' values are handled by the rules instead
(``RULE_FLAGS``, ``FORK_FLAGS``, ``GCG_RULE_FLAGS`` name them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Dest = tuple[str, ...]

# Reasons for accepted-and-ignored flags; the ignore note groups flags by these strings.
_RESEARCH = "research-only in the RePULSe fork: diagnostics, ablations and dead code (spec §6)"
_PLACEMENT = "GPU placement / memory knob of OpenRLHF's Ray+DeepSpeed launcher; no effect on results here"
_LAUNCHER = "set by the launcher (torchrun/deepspeed), not needed"
_DEAD = "dead flag in OpenRLHF itself (removed feature)"
_ASYNC = (
    "partial rollouts (generation interrupted by a weight update) are not implemented; "
    "--train.async_enable draws whole rollouts ahead instead"
)
_SLEEP = (
    "the training engines keep their state on the device between phases; "
    "--engine.adam_offload and --ref.offload move state to CPU"
)
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
        # placement (Ray) and asynchronous training
        "colocate_all_models": ("launch.colocate_all_models",),
        "colocate_actor_ref": ("launch.colocate_actor_ref",),
        "colocate_critic_reward": ("launch.colocate_critic_reward",),
        "train.colocate_all": ("launch.colocate_all_models",),
        "train.colocate_actor_ref": ("launch.colocate_actor_ref",),
        "train.colocate_critic_reward": ("launch.colocate_critic_reward",),
        "async_train": ("train.async_enable",),
        "async_queue_size": ("train.async_queue_size",),
        # vLLM
        "vllm_num_engines": ("vllm.num_engines",),
        "vllm_tensor_parallel_size": ("vllm.tensor_parallel_size",),
        "vllm_sync_backend": ("vllm.sync_backend",),
        "vllm_sync_with_ray": ("vllm.sync_with_ray",),
        "vllm_enable_sleep": ("vllm.enable_sleep",),
        "vllm_gpu_memory_utilization": ("vllm.gpu_memory_utilization",),
        "enable_prefix_caching": ("vllm.enable_prefix_caching",),
        "enforce_eager": ("vllm.enforce_eager",),
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
        # OpenRLHF memory knobs
        "deepspeed_enable_sleep": _SLEEP,
        "ds.enable_sleep": _SLEEP,
        "use_dynamic_batch": _PLACEMENT,
        "train.dynamic_batch_enable": _PLACEMENT,
        "train_max_tokens_per_gpu": _PLACEMENT,
        "train.max_tokens_per_gpu": _PLACEMENT,
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

# ``batch_inference`` (--eval_task generate | generate_vllm -> ``repulse generate``, rm -> ``repulse score``)
# and ``interactive_chat`` (-> ``repulse chat``). ``--eval_task`` itself is a rule (``_eval_task_rule``).
_NO_TRAINING = "no model is trained here (generation and scoring run forwards only)"
_FAST_TOKENIZER = "transformers 5 always loads the fast tokenizer"
_INFER_COMMON = _Table(
    renames={
        "dataset": ("data.dataset",),
        "dataset_probs": ("data.dataset_probs",),
        "dataset_split": ("data.dataset_split",),
        "max_samples": ("data.max_samples",),
        "input_key": ("data.input_key",),
        "output_path": ("output.path",),
        "post_processor": ("score.post_processor",),
        "reward_template": ("score.reward_template",),
        "normalize_reward": ("reward.normalize_enable",),
        "reward_pretrain": ("reward.model_name_or_path",),
        "remote_rm_url": ("reward.remote_url",),
    },
    ignored={
        "local_rank": _LAUNCHER,
        "disable_fast_tokenizer": _FAST_TOKENIZER,
        "value_head_prefix": _HEAD,
        "value_prefix_head": _HEAD,
        **dict.fromkeys(
            (
                "zero_stage",
                "adam_offload",
                "gradient_checkpointing",
                "zpg",
                "ring_attn_size",
                "ring_head_stride",
            ),
            _NO_TRAINING,
        ),
    },
)
_SAMPLING = {
    "max_new_tokens": ("rollout.max_new_tokens",),
    "greedy_sampling": ("rollout.greedy",),
    "temperature": ("rollout.temperature",),
    "top_p": ("rollout.top_p",),
    "top_k": ("rollout.top_k",),
    "repetition_penalty": ("rollout.repetition_penalty",),
    "seed": ("rollout.seed",),
    "pretrain": ("model.model_name_or_path",),
    "input_template": ("data.input_template",),
    "apply_chat_template": ("data.apply_chat_template",),
    "tokenizer_chat_template": ("data.tokenizer_chat_template",),
    "bf16": ("engine.param_dtype=bf16",),
    "flash_attn": ("engine.attn_implementation=flash_attention_2",),
    "attn_implementation": ("engine.attn_implementation",),
}
_GENERATE = _Table(
    renames={
        **_SAMPLING,
        "prompt_max_len": ("data.prompt_max_len",),
        "best_of_n": ("rollout.n_samples_per_prompt",),
        "micro_batch_size": ("rollout.micro_batch_size",),
        "iter": ("data.iter",),
        "rollout_batch_size": ("data.rollout_batch_size",),
        "tp_size": ("vllm.tensor_parallel_size",),
        "vllm_tensor_parallel_size": ("vllm.tensor_parallel_size",),
        "enable_prefix_caching": ("vllm.enable_prefix_caching",),
        "max_num_seqs": ("vllm.max_num_seqs",),
        "gpu_memory_utilization": ("vllm.gpu_memory_utilization",),
        "vllm_gpu_memory_utilization": ("vllm.gpu_memory_utilization",),
        "enforce_eager": ("vllm.enforce_eager",),
    },
    ignored={
        "max_len": "generation lengths are --data.prompt_max_len (prompt) and --rollout.max_new_tokens (response)",
    },
)
_SCORE_RUNTIME = "reward models load in their checkpoint's dtype with the default attention"
_SCORE = _Table(
    renames={
        "pretrain": ("reward.model_name_or_path",),
        "max_len": ("reward.max_len",),
        "micro_batch_size": ("score.micro_batch_size",),
        "output_key": ("data.output_key",),
        "label_key": ("data.label_key",),
        "input_template": ("data.input_template",),
        "apply_chat_template": ("data.apply_chat_template",),
        "tokenizer_chat_template": ("data.tokenizer_chat_template",),
    },
    ignored={
        **dict.fromkeys(("bf16", "flash_attn", "attn_implementation", "packing_samples"), _SCORE_RUNTIME),
        "seed": "scoring draws no random numbers",
        **dict.fromkeys(
            (
                "best_of_n",
                "max_new_tokens",
                "prompt_max_len",
                "temperature",
                "top_p",
                "top_k",
                "greedy_sampling",
            )
            + ("repetition_penalty", "iter", "rollout_batch_size", "tp_size", "enable_prefix_caching"),
            "a generation flag; --eval_task rm scores the responses already in --dataset",
        ),
    },
)
_CHAT = _Table(
    renames={
        **_SAMPLING,
        "max_len": ("chat.max_len",),
        "reward": ("reward.model_name_or_path",),
        "system_prompt": ("chat.system_prompt",),
    },
    ignored={"local_rank": _LAUNCHER, "disable_fast_tokenizer": _FAST_TOKENIZER},
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
    if command == "generate":
        return (_GENERATE, _INFER_COMMON)
    if command == "score":
        return (_SCORE, _INFER_COMMON)
    if command == "chat":
        return (_CHAT,)
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
        "enable_vllm_is_correction", "vllm_is_correction_type", "vllm_is_truncated_threshold", "use_icepop",
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
