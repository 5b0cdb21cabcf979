"""Typed config sections, named as in OpenRLHF's 0.10.2 CLI (``engine`` is its ``ds``).

Each command has one root dataclass built from these sections. Defaults live here
and nowhere else; code reads ``cfg.data.max_len``, never ``getattr(cfg, ..., default)``.
Field metadata ``help`` is shown by ``--help``; the allowed values (``ge``, ``gt``, ``le``,
``lt``, ``also``, ``choices``) are checked when any command parses its flags. Learning rates
must be > 0: a learning rate of 0 would accept a run that trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _h(default, help: str, **checks):  # noqa: A002 - 'help' mirrors argparse
    """A field with ``--help`` text and its allowed values, checked at parse time for every command
    (``repulse.config.schema.check_values``): ``ge``/``gt``/``le``/``lt`` bounds (numbers must then
    also be finite), ``also`` extra allowed values (e.g. -1 for "no limit"), ``choices``;
    ``model_path`` ("model" or "model+tokenizer", ``comma_list`` for several) marks a model
    path checked before anything is loaded (``repulse.config.paths``)."""
    return field(default=default, metadata={"help": help, **checks})


def _hf(factory, help: str, **checks):  # noqa: A002
    return field(default_factory=factory, metadata={"help": help, **checks})


def _ray(default, help: str, **checks):  # noqa: A002
    """A placement knob read only by the Ray backend: set without ``--launch.backend ray`` it warns
    once (``parse_config``), naming the flag."""
    return field(default=default, metadata={"help": help, "ray_only": True, **checks})


def _compat(default, help: str):  # noqa: A002
    """A flag the seed documents use that has no effect in this version: accepted, and a value
    other than the default warns once (``parse_config``) instead of being silently ignored."""
    return field(default=default, metadata={"help": help, "no_effect": True})


# --------------------------------------------------------------------------- model side


@dataclass
class LoraSection:
    rank: int = _h(0, "LoRA rank; 0 disables LoRA", ge=0)
    alpha: int = _h(16, "LoRA alpha", gt=0)
    dropout: float = _h(0.0, "LoRA dropout", ge=0, lt=1)
    target_modules: list[str] = _hf(lambda: ["all-linear"], "modules to adapt ('all-linear' or names)")


@dataclass
class AdamSection:
    lr: float = _h(5e-6, "learning rate", gt=0)
    betas: list[float] = _hf(lambda: [0.9, 0.95], "Adam betas", ge=0, lt=1)
    eps: float = _h(1e-8, "Adam epsilon", gt=0)
    weight_decay: float = _h(0.0, "decoupled weight decay", ge=0)


@dataclass
class MuonSection:
    lr: float = _h(
        0.02, "learning rate of Muon's 2-D weight group (other parameters use AdamW at adam.lr)", gt=0
    )
    momentum: float = _h(0.95, "Muon momentum", ge=0, lt=1)
    nesterov: bool = _h(True, "Nesterov momentum")
    ns_steps: int = _h(5, "Newton-Schulz iterations", ge=1)


@dataclass
class OptimSection:
    name: str = _h("adam", "optimizer: adam (AdamW) | muon", choices=("adam", "muon"))
    lr_scheduler: str = _h(
        "cosine_with_min_lr",
        "cosine_with_min_lr | constant | linear",
        choices=("cosine_with_min_lr", "constant", "linear"),
    )
    lr_warmup_ratio: float = _h(0.03, "fraction of steps spent warming up linearly from 0", ge=0, le=1)
    min_lr_ratio: float = _h(0.1, "final lr / peak lr for cosine_with_min_lr", ge=0, le=1)
    max_norm: float = _h(1.0, "gradient clipping by global norm; 0 disables", ge=0)


@dataclass
class ModelSection:
    model_name_or_path: str | None = _h(None, "HF model directory or Hub name", model_path="model+tokenizer")
    gradient_checkpointing_enable: bool = _h(False, "recompute activations in backward")
    gradient_checkpointing_reentrant: bool = _h(False, "use reentrant checkpointing")
    pretrain_mode_enable: bool = _h(False, "SFT: loss on every token (continued pre-training)")
    aux_loss_coef: float = _h(0.0, "MoE load-balancing loss coefficient", ge=0)
    lora: LoraSection = _hf(LoraSection, "LoRA adapters")
    load_in_4bit: bool = _h(False, "QLoRA: load the base model in 4 bit (needs CUDA + bitsandbytes)")
    # reward model
    loss_type: str = _h("sigmoid", "RM loss: sigmoid (Bradley-Terry) | logexp")
    margin_loss_enable: bool = _h(False, "RM: subtract the per-pair 'margin' field inside the loss")
    compute_fp32_loss_enable: bool = _h(False, "RM: compute the loss in fp32")
    value_head_prefix: str = _h("score", "attribute name of the scalar head (RM / critic)")
    # DPO family
    beta: float = _h(0.1, "DPO/KTO temperature beta", gt=0)
    ipo_enable: bool = _h(False, "DPO: use the IPO loss")
    label_smoothing: float = _h(0.0, "DPO: conservative DPO (cDPO) label smoothing", ge=0, le=0.5)
    nll_loss_coef: float = _h(0.0, "DPO: weight of the NLL loss on chosen responses", ge=0)
    # KTO
    desirable_weight: float = _h(1.0, "KTO: weight of desirable examples", ge=0)
    undesirable_weight: float = _h(1.0, "KTO: weight of undesirable examples", ge=0)
    # PRM
    placeholder_token: str | None = _h(None, "PRM: step placeholder token, e.g. 'ки'")
    reward_tokens: list[str] | None = _h(None, "PRM: the two label tokens, e.g. '+' '-'")
    # KD
    teacher_model: str | None = _h(None, "KD: teacher model directory", model_path="model")
    teacher_offload: bool = _h(False, "KD: keep the teacher on CPU between forwards")
    kd_coef: float = _h(0.4, "KD: weight of the distillation term", ge=0, le=1)


@dataclass
class EngineSection:
    backend: str = _h(
        "local", "training engine: local | fsdp | deepspeed", choices=("local", "fsdp", "deepspeed")
    )
    zero_stage: int = _h(2, "ZeRO stage (deepspeed 1/2/3); for fsdp, 3 shards parameters, 1/2 do not")
    param_dtype: str = _h("auto", "auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    attn_implementation: str = _h(
        "sdpa", "eager | sdpa | flash_attention_2 (falls back to sdpa without CUDA)"
    )
    packing_samples: bool = _h(False, "pack several samples per row, no attention across them")
    shared_prompt_enable: bool = _h(
        True, "preference pairs (rm, dpo): chosen and rejected in one row that holds their common prefix once"
    )
    adam_offload: bool = _h(False, "keep optimizer state on CPU")
    cpu_offload: bool = _h(False, "fsdp: offload parameters to CPU")
    grad_accum_dtype: str | None = _h(None, "gradient accumulation dtype (deepspeed)")
    overlap_comm: bool = _h(False, "overlap communication (deepspeed)")
    zpg: int = _h(1, "ZeRO++ partition size (deepspeed)", ge=1)
    use_liger_kernel: bool = _compat(False, "accepted for compatibility; no effect here")
    deepcompile: bool = _compat(False, "accepted for compatibility; no effect here")
    ring_attn_size: int = _h(1, "accepted for compatibility; must be 1")
    ring_attn_head_stride: int = _compat(1, "accepted for compatibility")
    tensor_parallel_size: int = _h(1, "accepted for compatibility; must be 1")
    use_universal_ckpt: bool = _compat(False, "accepted for compatibility; no effect")


# --------------------------------------------------------------------------- data / train


@dataclass
class DataSection:
    dataset: str | None = _h(
        None, "training data: file(s), dir, json@dir, saved dataset or Hub name; comma list"
    )
    dataset_probs: str | None = _h(None, "mixing probabilities, comma list, one per dataset")
    dataset_split: str = _h("train", "split to read")
    input_key: str = _h("input", "key of the prompt / input text")
    output_key: str | None = _h(None, "key of the response text")
    label_key: str | None = _h(None, "key of labels (KTO label, RL reward-function label)")
    chosen_key: str = _h("chosen", "key of the preferred response")
    rejected_key: str = _h("rejected", "key of the dispreferred response")
    prompt_key: str | None = _h(None, "key of the shared prompt of a pair")
    input_template: str | None = _h(
        None, "format string with one {} for the prompt, e.g. 'User: {}\\nAssistant: '"
    )
    apply_chat_template: bool = _h(False, "render with the tokenizer's chat template")
    tokenizer_chat_template: str | None = _h(None, "override the tokenizer's chat template (jinja string)")
    multiturn: bool = _h(False, "SFT: loss on every assistant turn (needs apply_chat_template)")
    max_len: int = _h(2048, "max tokens per sample (prompt + response)", ge=1)
    max_samples: int = _h(100_000_000, "cap on samples read per dataset", ge=1)
    disable_fast_tokenizer: bool = _h(
        False, "load the slow (pure-Python) tokenizer; refused when the model's has only a fast form"
    )
    dataloader_num_workers: int = _h(
        0,
        "worker processes that collate the next steps' micro-batches while the model trains (0: inline)",
        ge=0,
    )
    prompt_dataset: str | None = _h(None, "RL: prompt data")
    prompt_probs: str | None = _h(None, "RL: mixing probabilities of prompt data")
    prompt_split: str = _h("train", "RL: split of the prompt data")


@dataclass
class TrainSection:
    batch_size: int = _h(128, "global batch size (samples per optimizer step, all processes)", ge=1)
    micro_batch_size: int = _h(8, "samples per forward per process", ge=1)
    max_epochs: int = _h(1, "passes over the training data", ge=1)
    max_steps: int = _h(-1, "stop after this many optimizer steps (-1: no limit)", ge=1, also=(-1,))
    seed: int = _h(42, "random seed")
    full_determinism_enable: bool = _h(False, "deterministic algorithms")
    num_episodes: int = _h(1, "RL: passes over the prompt data", ge=1)
    nan_policy: str = _h(
        "stop",
        "a NaN/infinite loss or gradient norm: stop (end the run, naming the step) | skip (drop that "
        "step's update, count it in skipped_steps)",
        choices=("stop", "skip"),
    )
    nan_max_consecutive_skips: int = _h(
        10, "nan_policy skip: stop anyway after this many steps in a row were dropped", ge=1
    )


@dataclass
class RLTrainSection(TrainSection):
    async_enable: bool = _h(
        False,
        "Ray: draw the rollouts of the next --train.async_queue_size steps while a step trains "
        "(needs rollout engines of their own, --vllm.num_engines)",
    )
    async_queue_size: int = _h(
        1,
        "async: rollouts drawn ahead (k); a sample is at most k policy versions old; 0 is synchronous",
        ge=0,
    )


@dataclass
class CkptSection:
    output_dir: str = _h("./ckpt", "output directory: config, metrics, final HF model")
    path: str | None = _h(None, "checkpoint directory (default: <output_dir>/checkpoints)")
    save_steps: int = _h(-1, "save a resumable checkpoint every N steps (-1: never)", ge=1, also=(-1,))
    max_num: int = _h(3, "keep at most this many checkpoints", ge=1)
    max_mem: float = _compat(1e8, "accepted for compatibility (GB budget)")
    load_enable: bool = _h(False, "resume from the newest checkpoint in ckpt.path")
    overwrite: bool = _h(
        False,
        "start over in an output directory that holds an earlier run's outputs (its checkpoints, weights "
        "and metrics are removed first); without it such a directory is refused unless resumed",
    )
    save_hf: bool = _h(False, "also export an HF directory with each checkpoint")
    disable_ds: bool = _compat(False, "accepted for compatibility")


@dataclass
class EvalSection:
    dataset: str | None = _h(None, "evaluation data")
    split: str = _h("train", "split of the evaluation data")
    steps: int = _h(-1, "evaluate every N steps (-1: once per epoch)", ge=1, also=(-1,))
    max_samples: int = _h(100_000_000, "cap on evaluation samples", ge=1)
    temperature: float = _h(0.6, "RL: sampling temperature for evaluation (0: greedy)", ge=0)
    n_samples_per_prompt: int = _h(4, "RL: samples per evaluation prompt", ge=1)


@dataclass
class WandbSection:
    key: str | None = _h(
        None, "enables wandb: an API key, or True for the account wandb is logged into (`wandb login`)"
    )
    org: str | None = _h(None, "wandb entity")
    group: str | None = _h(None, "wandb group")
    project: str = _h("repulse", "wandb project")
    run_name: str | None = _h(None, "wandb run name")


@dataclass
class LoggerSection:
    logging_steps: int = _h(1, "log every N steps", ge=1)
    tensorboard_dir: str | None = _h(None, "write TensorBoard events here")
    wandb: WandbSection = _hf(WandbSection, "Weights & Biases")
    progress_bar: bool = _h(True, "console progress bar")


# --------------------------------------------------------------------------- RL


@dataclass
class ActorSection:
    model_name_or_path: str | None = _h(None, "policy model directory", model_path="model+tokenizer")
    adam: AdamSection = _hf(lambda: AdamSection(lr=1e-6), "actor optimizer")
    muon: MuonSection = _hf(MuonSection, "actor Muon optimizer")
    optim: OptimSection = _hf(OptimSection, "actor optimizer choice, scheduler, clipping")
    gradient_checkpointing_enable: bool = _h(False, "recompute activations")
    gradient_checkpointing_reentrant: bool = _h(False, "reentrant checkpointing")
    eps_clip: float = _h(0.2, "PPO clip range", gt=0)
    eps_clip_low_high: list[float] | None = _h(None, "asymmetric clip range: low high", ge=0)
    dual_clip: float | None = _h(None, "dual-clip constant c > 1", gt=1)
    entropy_coef: float | None = _h(None, "entropy bonus coefficient (entropy is logged either way)")
    policy_loss_type: str = _h("ppo", "ppo | gspo")
    aux_loss_coef: float = _h(0.0, "MoE aux loss", ge=0)
    freeze_visual_encoder: bool = _compat(False, "accepted for compatibility")
    num_nodes: int = _ray(1, "Ray: nodes of the policy's actor group", ge=1)
    num_gpus_per_node: int = _ray(
        1, "Ray: devices per node of the policy's group (GPUs, or CPU bundles on a CPU cluster)", ge=1
    )


@dataclass
class CriticSection:
    model_name_or_path: str | None = _h(None, "critic init (default: the actor)", model_path="model")
    adam: AdamSection = _hf(lambda: AdamSection(lr=9e-6), "critic optimizer")
    muon: MuonSection = _hf(MuonSection, "critic Muon optimizer")
    optim: OptimSection = _hf(OptimSection, "critic optimizer choice, scheduler, clipping")
    value_clip: float = _h(0.5, "value clip range", gt=0)
    freezing_steps: int = _h(-1, "train only the critic for the first N steps", ge=-1)
    save_value_network: bool = _h(False, "export the critic at the end")
    num_nodes: int = _ray(1, "Ray: nodes of this role's actor group", ge=1)
    num_gpus_per_node: int = _ray(
        1, "Ray: devices per node of this role's group (GPUs, or CPU bundles)", ge=1
    )


@dataclass
class RefSection:
    model_name_or_path: str | None = _h(
        None, "reference model (default: the policy's start)", model_path="model"
    )
    offload: bool = _h(False, "keep the reference model on CPU")
    num_nodes: int = _ray(1, "Ray: nodes of this role's actor group", ge=1)
    num_gpus_per_node: int = _ray(
        1, "Ray: devices per node of this role's group (GPUs, or CPU bundles)", ge=1
    )


@dataclass
class RewardSection:
    model_name_or_path: str | None = _h(
        None, "reward model dir(s), comma list", model_path="model+tokenizer", comma_list=True
    )
    reduction: str = _h("sum", "how several reward sources combine: sum | mean | min")
    remote_url: str | None = _h(None, "reward server URL(s), comma list, or a .py file with reward_func")
    normalize_enable: bool = _h(False, "normalise rewards with running mean/std")
    clip_range: list[float] = _hf(lambda: [-10.0, 10.0], "clip rewards to [low, high]")
    overlong_buffer_len: float | None = _h(None, "overlong penalty buffer (tokens)")
    overlong_penalty_factor: float = _h(1.0, "overlong penalty factor", ge=0)
    stop_properly_penalty_coef: float | None = _h(None, "penalty for responses cut at max_new_tokens")
    offload: bool = _h(False, "keep reward models on CPU")
    max_len: int = _h(2048, "RM input cap: truncates the prompt side, never the answer", ge=1)
    input_format: str = _h(
        "auto",
        "how an RM reads a sample: auto (the format a repulse-trained RM records; else concat) | "
        "concat (prompt+response text) | pair | chat",
    )
    cap: float | None = _h(None, "upper cap on the reward")
    chosen_label: int | None = _h(None, "score a classifier by this label's logit (e.g. non-toxic)")
    timeout_s: float = _h(60.0, "HTTP reward timeout per request", gt=0)
    retries: int = _h(3, "HTTP retries", ge=0)
    num_nodes: int = _ray(1, "Ray: nodes of this role's actor group", ge=1)
    num_gpus_per_node: int = _ray(
        1, "Ray: devices per node of this role's group (GPUs, or CPU bundles)", ge=1
    )


@dataclass
class RolloutSection:
    backend: str = _h("hf", "hf | vllm")
    batch_size: int = _h(8, "prompts per RL step", ge=1)
    micro_batch_size: int = _h(8, "samples per generation / experience forward", ge=1)
    n_samples_per_prompt: int = _h(1, "responses per prompt (group size)", ge=1)
    temperature: float = _h(1.0, "sampling temperature", ge=0)
    top_p: float = _h(1.0, "nucleus sampling", gt=0, le=1)
    top_k: int = _h(0, "top-k sampling (0: off)", ge=0)
    max_new_tokens: int | None = _h(None, "max response tokens (default: data.max_len - prompt length)", ge=1)
    max_tokens_per_gpu: int | None = _compat(None, "accepted for compatibility")
    vllm_generate_batch_size: int | None = _h(None, "vLLM generation batch size", ge=1)


@dataclass
class AdvantageSection:
    estimator: str = _h("gae", "gae | reinforce | reinforce_baseline | rloo | group_norm | dr_grpo")
    gamma: float = _h(1.0, "discount", ge=0, le=1)
    lambd: float = _h(1.0, "GAE lambda", ge=0, le=1)
    no_std_norm: bool = _h(False, "centre advantages without dividing by the std")


@dataclass
class RolloutISSection:
    mode: str = _h(
        "none",
        "correct the policy loss for a rollout engine whose log-probs differ from the trainer's "
        "(w = π_old/π_rollout per token): none | tis (clamp w to [low, high]) | icepop (drop tokens "
        "with w outside) | seq-mask-tis (drop sequences whose geometric-mean w is outside)",
    )
    low: float = _h(0.5, "lower end of the importance-weight band")
    high: float = _h(5.0, "upper end of the importance-weight band (the TIS cap)")


@dataclass
class KLSection:
    init_coef: float = _h(0.01, "KL coefficient (in the reward, or of the loss)")
    estimator: str = _h("k1", "k1 | k2 | k3")
    use_loss: bool = _h(False, "KL as a loss term instead of in the reward")
    target: float | None = _h(None, "adaptive KL target", gt=0)
    horizon: int = _h(10000, "adaptive KL horizon", ge=1)


@dataclass
class AlgoSection:
    advantage: AdvantageSection = _hf(AdvantageSection, "advantage estimation")
    kl: KLSection = _hf(KLSection, "KL penalty / loss")
    rollout_is: RolloutISSection = _hf(RolloutISSection, "rollout importance-sampling correction")
    dynamic_filtering_enable: bool = _h(False, "drop groups whose mean reward is outside the range")
    dynamic_filtering_range: list[float] = _hf(lambda: [0.0, 1.0], "kept mean-reward range")
    max_epochs: int = _h(1, "update epochs per rollout batch", ge=1)


@dataclass
class VllmSection:
    num_engines: int | None = _ray(
        None,
        "Ray: rollout engines in actors of their own that receive the policy's weights after every "
        "update (unset or 0: each policy actor samples with its own engine)",
        ge=0,
    )
    tensor_parallel_size: int = _h(
        1, "vLLM TP size (under torchrun: consecutive ranks form one engine)", ge=1
    )
    gpu_memory_utilization: float = _h(
        0.9, "vLLM memory fraction (GPU; on CPU: VLLM_CPU_KVCACHE_SPACE GiB)", gt=0, le=1
    )
    enable_prefix_caching: bool = _h(False, "vLLM prefix caching (reset after every weight sync)")
    enforce_eager: bool = _h(False, "no CUDA graphs / torch.compile in vLLM")
    max_num_seqs: int | None = _h(None, "vLLM: most sequences decoded at once (default: vLLM's)", ge=1)
    enable_sleep: bool = _h(False, "vLLM sleep mode between rollouts (no effect on CPU)")
    sync_backend: str = _h(
        "nccl", "weight sync backend for engines in other processes (CPU: gloo)", choices=("nccl", "gloo")
    )
    sync_with_ray: bool = _compat(
        False, "weights travel over a torch.distributed group of their own (--vllm.sync_backend)"
    )
    sync_bucket_mb: float = _h(64.0, "weight sync: most MiB per bucket", gt=0)
    sync_timeout_s: float = _h(600.0, "weight sync: timeout of every collective, seconds", gt=0)


@dataclass
class RepulseSection:
    method: str = _h(
        "rl",
        "rl (the algo.* estimator alone) | reinforce | reward_transform | p_proposal | repulse",
    )
    beta: float = _h(10.0, "RePULSe beta > 0: sigma(s) ∝ p(s)·exp(-beta·r(s))", gt=0)
    alpha: float = _h(0.01, "weight of the negative-training term (reference scale: N x paper alpha)", ge=0)
    proposal_lr: float = _h(1e-4, "learning rate of the proposal q", gt=0)
    q_updates_per_step: int = _h(1, "q-only CTL updates per step (N_q)", ge=1)
    p_first: bool = _h(False, "update p before q within a step (default: q first)")
    reward_transform: str | None = _h(
        None, "minus_alpha_exp_beta_r | minus_alpha_ind (reward_transform method)"
    )
    transform_a: float = _h(1.0, "reward transform a")
    transform_b: float = _h(0.1, "reward transform b (r - a·exp(-b·r))")
    transform_eta: float = _h(-5.0, "reward transform threshold eta (r - a·1[r<eta])")
    bad_threshold: float = _h(-5.0, "eta: reward below this is a bad output")
    save_negdata: str | None = _h(None, "write every sample with reward < negdata_threshold here (jsonl)")
    negdata_threshold: float = _h(-5.0, "threshold for negative-data harvesting")
    analytic_bad_word_calc: bool = _h(False, "toy: exact P(bad) by enumeration after each fit step")
    bad_words: list[str] | None = _h(None, "toy: the bad words for the exact P(bad)")
    exact_max_tokens: int = _h(2, "toy: response length enumerated exactly", ge=1)
    fit_steps: int = _h(1, "toy: outer repeats of fit with an exact evaluation after each", ge=1)


@dataclass
class LaunchSection:
    backend: str = _h(
        "local",
        "where the RL roles run: local (this process; one copy per torchrun rank) | ray (actor groups "
        "on a Ray cluster driven by one controller)",
        choices=("local", "ray"),
    )
    ray_address: str | None = _ray(
        None, "Ray cluster to join (default: $RAY_ADDRESS, else a local cluster is started)"
    )
    colocate_actor_ref: bool = _ray(False, "Ray: the policy and the reference share bundles")
    colocate_critic_reward: bool = _ray(False, "Ray: the critic and the reward models share bundles")
    colocate_all_models: bool = _ray(
        False,
        "Ray hybrid engine: every model and the rollout engines share the policy's bundles; the "
        "engines sleep while the models train and wake before the weight sync",
    )
    device: str = _ray(
        "auto",
        "Ray: what a bundle holds: gpu (one GPU) | cpu (CPUs only) | auto (gpu if the cluster has GPUs)",
        choices=("auto", "gpu", "cpu"),
    )
    cpus_per_device: float = _ray(
        1.0, "Ray: CPUs per bundle (fractions allowed, e.g. 0.5 on CPU clusters)", gt=0
    )
    local_num_cpus: int | None = _ray(None, "Ray: CPUs of the local cluster started when none is given", ge=1)
    timeout_s: float = _ray(
        1800.0,
        "Ray: longest wait for any call to a role (and for a collective): a dead or stuck actor fails "
        "the run within this time",
        gt=0,
    )


# --------------------------------------------------------------------------- roots


@dataclass
class CommonConfig:
    """Sections every training command has."""

    data: DataSection = _hf(DataSection, "data")
    train: TrainSection = _hf(TrainSection, "batching, epochs, seed")
    engine: EngineSection = _hf(EngineSection, "training engine (seed name: ds)")
    ckpt: CkptSection = _hf(CkptSection, "outputs and checkpoints")
    eval: EvalSection = _hf(EvalSection, "evaluation")
    logger: LoggerSection = _hf(LoggerSection, "logging")


@dataclass
class OfflineConfig(CommonConfig):
    """SFT / RM / PRM / DPO / KTO / KD: one trained model."""

    model: ModelSection = _hf(ModelSection, "the trained model and its loss knobs")
    ref: RefSection = _hf(RefSection, "reference model (DPO/KTO)")
    adam: AdamSection = _hf(AdamSection, "AdamW")
    muon: MuonSection = _hf(MuonSection, "Muon")
    optim: OptimSection = _hf(OptimSection, "optimizer choice, scheduler, clipping (seed: flat flags)")


@dataclass
class RLConfig(CommonConfig):
    train: RLTrainSection = _hf(RLTrainSection, "batching, episodes, seed, asynchronous rollouts")
    actor: ActorSection = _hf(ActorSection, "policy")
    critic: CriticSection = _hf(CriticSection, "value model (gae)")
    ref: RefSection = _hf(RefSection, "reference model")
    reward: RewardSection = _hf(RewardSection, "reward sources")
    rollout: RolloutSection = _hf(RolloutSection, "generation")
    algo: AlgoSection = _hf(AlgoSection, "advantages and KL")
    vllm: VllmSection = _hf(VllmSection, "vLLM rollout engine")
    repulse: RepulseSection = _hf(RepulseSection, "RePULSe and its baselines")
    launch: LaunchSection = _hf(LaunchSection, "where the roles run: this process or a Ray cluster")


@dataclass
class TailSection:
    policy: str | None = _h(None, "the policy to evaluate (HF dir)", model_path="model+tokenizer")
    proposal: str | None = _h(
        None,
        "sample from this proposal q instead and report the importance-sampling estimate",
        model_path="model",
    )
    passes: int = _h(1, "passes over the held-out prompts (k)", ge=1)
    kl_coef: float = _h(0.0, "λ in the return r − λ·KL(p ‖ ref) (needs --ref.model_name_or_path)", ge=0)
    eta: list[float] = _hf(
        lambda: [-5.0], "bad-output thresholds η for the summary (any η can be used later)"
    )
    cvar_levels: list[float] = _hf(lambda: [0.01], "CVaR levels a", gt=0, le=1)
    exact: bool = _h(False, "exact P(bad word) by enumeration (outputs of <= exact_max_tokens tokens)")
    bad_words: list[str] | None = _h(None, "bad words for --tail.exact (default: the toy's)")
    exact_max_tokens: int = _h(2, "response length enumerated by --tail.exact", ge=1)
    negdata_threshold: float | None = _h(None, "also write samples with reward below this to negdata.jsonl")


@dataclass
class EvalTailConfig:
    tail: TailSection = _hf(TailSection, "what to evaluate")
    data: DataSection = _hf(DataSection, "held-out prompts (--data.prompt_dataset)")
    rollout: RolloutSection = _hf(lambda: RolloutSection(n_samples_per_prompt=4), "sampling")
    reward: RewardSection = _hf(RewardSection, "reward sources")
    ref: RefSection = _hf(RefSection, "reference model for the KL in the return")
    engine: EngineSection = _hf(EngineSection, "dtype / attention")
    train: TrainSection = _hf(TrainSection, "seed (train.seed)")
    ckpt: CkptSection = _hf(
        lambda: CkptSection(output_dir=""),
        "output directory (default: the policy's run directory when it is one - it holds the run's "
        "config.yaml, so `repulse plot` pairs the tail summary with the run - else ./tail_eval)",
    )
    logger: LoggerSection = _hf(LoggerSection, "logging")


@dataclass
class GcgSection:
    policy: str | None = _h(
        None,
        "the policy to attack (HF dir, e.g. a repulse run's output directory)",
        model_path="model+tokenizer",
    )
    targets: str | None = _h(None, "CSV file with a 'goal,target' header: one attack per row")
    max_targets: int = _h(100, "attack at most the first N rows of --gcg.targets", ge=1)
    suffix_len: int = _h(
        10, "adversarial suffix length: the default init is 'x x ... x' with this many x", ge=1
    )
    suffix_init: str | None = _h(None, "initial suffix text (default: suffix_len x's separated by spaces)")
    steps: int = _h(250, "GCG steps per target", ge=0)
    search_width: int = _h(512, "candidate suffixes proposed per step", ge=1)
    topk: int = _h(256, "top-k gradient tokens per suffix position to draw replacements from", ge=1)
    batch_size: int = _h(512, "candidate suffixes per loss forward", ge=1)
    n_replace: int = _h(1, "suffix positions replaced in each candidate", ge=1)
    buffer_size: int = _h(
        0,
        "0: move to each step's best candidate (plain GCG); K > 0: keep the K best suffixes seen and "
        "start every step from the best of them (the loss never goes up)",
        ge=0,
    )
    use_prefix_cache: bool = _h(
        True, "compute the prompt before the suffix once (KV cache); no effect on results"
    )
    filter_ids: bool = _h(True, "drop candidates whose text does not re-tokenise to the same ids")
    ascii_only: bool = _h(True, "suffix tokens must decode to printable ASCII (no special tokens either way)")
    add_space_before_target: bool = _h(False, "prepend a space to the target string")
    exclude_suffix_from_reward: bool = _h(
        True, "score responses on the original goal, without the suffix (the fork's flag did not: spec §6.4)"
    )
    sample_without_suffix: bool = _h(
        False, "also sample and score the un-attacked goal (rewards_no_suffix, the baseline)"
    )
    eta: list[float] = _hf(
        lambda: [-5.0],
        "thresholds η for the summary: success = some sample has r < η (any η can be used later)",
    )


@dataclass
class GcgConfig:
    gcg: GcgSection = _hf(GcgSection, "the attack")
    data: DataSection = _hf(
        lambda: DataSection(apply_chat_template=True),
        "prompt rendering: the policy's chat template (default, as the reference) or data.input_template",
    )
    rollout: RolloutSection = _hf(
        lambda: RolloutSection(n_samples_per_prompt=1000, micro_batch_size=100, max_new_tokens=20),
        "the sampler of the attacked prompt (use the training run's temperature/top_p/top_k) and "
        "the samples per target",
    )
    reward: RewardSection = _hf(RewardSection, "reward sources")
    engine: EngineSection = _hf(EngineSection, "dtype / attention")
    train: TrainSection = _hf(TrainSection, "seed (train.seed; target i uses seed + i)")
    ckpt: CkptSection = _hf(
        lambda: CkptSection(output_dir=""),
        "output directory of gcg_summary.json (default: the policy's run directory when it is one, so "
        "`repulse plot` pairs the attack with the run, else ./gcg_eval)",
    )


# --------------------------------------------------------------------------- batch generation and scoring
#
# ``repulse generate`` / ``score`` / ``chat`` / ``pipeline`` read only what is declared here: a section
# holds no field the command would ignore (a flag of another command is an unknown option).


@dataclass
class PolicySection:
    model_name_or_path: str | None = _h(
        None, "the model that generates: an HF model directory or Hub name", model_path="model+tokenizer"
    )


@dataclass
class PromptDataSection:
    dataset: str | None = _h(None, "prompts: file(s), dir, json@dir, saved dataset or Hub name; comma list")
    dataset_probs: str | None = _h(None, "mixing probabilities, comma list, one per dataset")
    dataset_split: str = _h("train", "split to read")
    max_samples: int = _h(100_000_000, "cap on rows read per dataset")
    seed: int = _h(42, "seed of the mixing order of several datasets (--data.dataset_probs)")
    input_key: str = _h("input", "key of the prompt (text, or chat messages with apply_chat_template)")
    input_template: str | None = _h(
        None, "format string with one {} for the prompt, e.g. 'User: {}\\nAssistant: '"
    )
    apply_chat_template: bool = _h(False, "render the prompt with the tokenizer's chat template")
    tokenizer_chat_template: str | None = _h(
        None, "override the tokenizer's chat template (jinja string or file)"
    )
    prompt_max_len: int | None = _h(
        None,
        "prompts longer than this many tokens are dropped (and counted in a warning); none: no cap",
        ge=1,
    )
    iter: int = _h(
        0, "which slice of the prompts: [iter*rollout_batch_size, (iter+1)*rollout_batch_size)", ge=0
    )
    rollout_batch_size: int = _h(-1, "prompts per slice (--data.iter); -1: all prompts", ge=1, also=(-1,))


@dataclass
class GenerationSection:
    backend: str = _h("hf", "rollout engine: hf (our KV-cached sampler) | vllm", choices=("hf", "vllm"))
    n_samples_per_prompt: int = _h(1, "responses per prompt (seed: --best_of_n)", ge=1)
    greedy: bool = _h(False, "greedy decoding (argmax); temperature, top_p and top_k are then unused")
    temperature: float = _h(1.0, "sampling temperature (0: greedy)", ge=0)
    top_p: float = _h(
        1.0, "nucleus sampling: keep the smallest set of tokens with this much mass", gt=0, le=1
    )
    top_k: int = _h(0, "keep the k most likely tokens (0 or -1: off)", ge=0, also=(-1,))
    repetition_penalty: float = _h(
        1.0,
        "divide positive (multiply negative) logits of tokens already in prompt or response by this",
        gt=0,
    )
    max_new_tokens: int = _h(1024, "max response tokens", ge=1)
    micro_batch_size: int = _h(
        16,
        "rows (prompts x n) per generate call, and the unit a resumed run keeps; with vllm make it "
        "large: vLLM batches within a call up to --vllm.max_num_seqs",
        ge=1,
    )
    seed: int = _h(42, "sampling seed: each call draws from a stream of (seed, iter, call index)")


@dataclass
class InferEngineSection:
    param_dtype: str = _h("auto", "auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    attn_implementation: str = _h(
        "sdpa", "eager | sdpa | flash_attention_2 (falls back to sdpa without CUDA)"
    )


@dataclass
class InferVllmSection:
    tensor_parallel_size: int = _h(1, "vLLM tensor-parallel size (seed: --tp_size)", ge=1)
    enable_prefix_caching: bool = _h(False, "vLLM automatic prefix caching")
    max_num_seqs: int | None = _h(None, "vLLM: most sequences in one batch (default: vLLM's)", ge=1)
    gpu_memory_utilization: float = _h(0.9, "vLLM: fraction of GPU memory it may take", gt=0, le=1)
    enforce_eager: bool = _h(False, "vLLM: no CUDA graphs")


@dataclass
class ScoreSection:
    post_processor: str = _h(
        "none",
        "none (every row with its reward) | rs (the best response per prompt) | iter_dpo (best and worst "
        "response per prompt as chosen/rejected) | csft (the reward written into the input, --score.reward_template)",
        choices=("none", "rs", "iter_dpo", "csft"),
    )
    reward_template: str = _h(
        "{input} <rm_score>: {reward} ",
        "csft: the new input; {input} is the input, {reward} the reward with two decimals",
    )
    micro_batch_size: int = _h(16, "rows per reward forward, and the unit a resumed run keeps", ge=1)


@dataclass
class OutputSection:
    path: str | None = _h(None, "the output JSON-lines file (written atomically; a killed run resumes)")


@dataclass
class ScoredDataSection:
    dataset: str | None = _h(
        None, "rows to score: file(s), dir, json@dir, saved dataset or Hub name; comma list"
    )
    dataset_probs: str | None = _h(None, "mixing probabilities, comma list, one per dataset")
    dataset_split: str = _h("train", "split to read")
    max_samples: int = _h(100_000_000, "cap on rows read per dataset")
    seed: int = _h(42, "seed of the mixing order of several datasets (--data.dataset_probs)")
    input_key: str = _h("input", "key of the prompt (the rendered prompt in a repulse generate output)")
    output_key: str | None = _h(
        "output",
        "key of the response; none: the input is a conversation whose last assistant turn is the "
        "response (needs apply_chat_template)",
    )
    label_key: str | None = _h(None, "key of a label passed to reward functions and servers")
    input_template: str | None = _h(
        None, "render a raw input with this format string first (one {}), e.g. 'User: {}\\nAssistant: '"
    )
    apply_chat_template: bool = _h(
        False, "inputs are chat messages: render them with the chat template of --data.tokenizer"
    )
    tokenizer: str | None = _h(
        None, "tokenizer whose chat template renders conversations (default: the first reward model's)"
    )
    tokenizer_chat_template: str | None = _h(None, "override that tokenizer's chat template")


@dataclass
class GenerateConfig:
    """``repulse generate``: responses to prompts, optionally scored in the same pass."""

    model: PolicySection = _hf(PolicySection, "the policy")
    data: PromptDataSection = _hf(PromptDataSection, "the prompts")
    rollout: GenerationSection = _hf(GenerationSection, "sampling")
    engine: InferEngineSection = _hf(InferEngineSection, "dtype / attention of the hf backend")
    vllm: InferVllmSection = _hf(InferVllmSection, "the vllm backend")
    reward: RewardSection = _hf(RewardSection, "optional: score each response in the same pass")
    score: ScoreSection = _hf(ScoreSection, "post-processing of the scored responses")
    output: OutputSection = _hf(OutputSection, "where the rows go")


@dataclass
class ScoreConfig:
    """``repulse score``: rewards for (input, output) rows, then a post-processor."""

    data: ScoredDataSection = _hf(ScoredDataSection, "the rows to score")
    reward: RewardSection = _hf(RewardSection, "reward sources")
    score: ScoreSection = _hf(ScoreSection, "post-processing")
    output: OutputSection = _hf(OutputSection, "where the rows go")


@dataclass
class ChatDataSection:
    input_template: str | None = _h(
        None, "format string with one {} for each user turn, e.g. 'User: {}\\nAssistant: '"
    )
    apply_chat_template: bool = _h(False, "render the conversation with the tokenizer's chat template")
    tokenizer_chat_template: str | None = _h(
        None, "override the tokenizer's chat template (jinja string or file)"
    )


@dataclass
class ChatSection:
    system_prompt: str | None = _h(
        None, "a system message that opens every conversation (chat template only)"
    )
    max_len: int = _h(2048, "prompt budget in tokens: the oldest turns are dropped to fit", ge=1)


@dataclass
class ChatConfig:
    """``repulse chat``: talk to a model; with a reward model, each reply's score."""

    model: PolicySection = _hf(PolicySection, "the model to talk to")
    data: ChatDataSection = _hf(ChatDataSection, "prompt rendering (input_template or apply_chat_template)")
    rollout: GenerationSection = _hf(
        lambda: GenerationSection(max_new_tokens=256, micro_batch_size=1), "sampling"
    )
    engine: InferEngineSection = _hf(InferEngineSection, "dtype / attention")
    reward: RewardSection = _hf(RewardSection, "optional: print the reward of each reply")
    chat: ChatSection = _hf(ChatSection, "conversation")


# --------------------------------------------------------------------------- iterative workflows


@dataclass
class PipelineSection:
    output_dir: str = _h("./pipeline", "everything the pipeline writes: iter_<i>/ stages, iter.log, state")
    policy: str | None = _h(
        None,
        "the starting policy (an SFT model): iteration 0 generates with it",
        model_path="model+tokenizer",
    )
    reference: str | None = _h(
        None, "iterative DPO: the reference model of every iteration (default: policy)", model_path="model"
    )
    iterations: int = _h(
        1, "iterations of generate -> score -> train (raise it to continue a finished run)", ge=1
    )


@dataclass
class RejectionSamplingConfig:
    """``repulse pipeline rejection-sampling``: generate best-of-n, keep the best (rs), SFT on it."""

    pipeline: PipelineSection = _hf(PipelineSection, "the loop")
    generate: GenerateConfig = _hf(GenerateConfig, "the generate stage (repulse generate options)")
    score: ScoreConfig = _hf(ScoreConfig, "the score stage (repulse score options)")
    sft: OfflineConfig = _hf(
        lambda: OfflineConfig(data=DataSection(input_key="input", output_key="output")),
        "the SFT stage (repulse sft options)",
    )


@dataclass
class IterativeDPOConfig:
    """``repulse pipeline iterative-dpo``: generate n, best/worst pairs (iter_dpo), DPO on them."""

    pipeline: PipelineSection = _hf(PipelineSection, "the loop")
    generate: GenerateConfig = _hf(
        lambda: GenerateConfig(rollout=GenerationSection(n_samples_per_prompt=2)), "the generate stage"
    )
    score: ScoreConfig = _hf(ScoreConfig, "the score stage")
    dpo: OfflineConfig = _hf(
        lambda: OfflineConfig(data=DataSection(prompt_key="prompt")), "the DPO stage (repulse dpo options)"
    )


@dataclass
class ConditionalSFTConfig:
    """``repulse pipeline csft``: score a data set, write each reward into its input, SFT on it."""

    pipeline: PipelineSection = _hf(PipelineSection, "the run (one iteration)")
    score: ScoreConfig = _hf(ScoreConfig, "the score stage")
    sft: OfflineConfig = _hf(
        lambda: OfflineConfig(data=DataSection(input_key="input", output_key="output")), "the SFT stage"
    )
