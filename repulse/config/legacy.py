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

from repulse.config.legacy_argv import _Ctx, _Flag, _group, _Out, flip_sign  # noqa: F401  flip_sign: public
from repulse.config.legacy_fork import fork_rule
from repulse.config.legacy_tables import (  # noqa: F401  _RL, _TRAIN_COMMON, RULE_FLAGS: read by tests
    _RL,
    _TRAIN_COMMON,
    FORK_FLAGS,
    GCG_RULE_FLAGS,
    RULE_FLAGS,
    Dest,
    _Table,
    _tables,
)
from repulse.config.schema import flatten, get_path, load_yaml
from repulse.config.usage import METHOD_FIELD, ROOTS, accepted
from repulse.errors import UserError

COMMANDS: tuple[str, ...] = (
    "sft", "rm", "prm", "dpo", "kto", "kd", "rl", "serve-rm", "gcg", "generate", "score", "chat",
)  # fmt: skip

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
    "lora_combiner": "lora-merge",  # flags already the seed's (repulse.models.merge_cli)
    "interactive_chat": "chat",
}

# the modules OpenRLHF runs under ``ray job submit``: their commands select the Ray backend
RAY_MODULES: frozenset[str] = frozenset({"train_ppo_ray"})

# batch_inference is two commands: --eval_task picks one (``_eval_task_rule`` checks the pairing).
_EVAL_TASKS: dict[str, str] = {"generate": "generate", "generate_vllm": "generate", "rm": "score"}

_OLD_PROMPT_MAX_LEN = 1024
_OLD_GENERATE_MAX_LEN = 1024


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


_ROLLOUT_IS_FLAGS = (
    "enable_vllm_is_correction", "vllm_is_correction_type", "vllm_is_truncated_threshold", "use_icepop",
    "algo.advantage.is_correction_enable", "algo.advantage.is_correction_type",
    "algo.advantage.is_correction_threshold",
)  # fmt: skip


def _rollout_is_rule(ctx: _Ctx, out: _Out) -> None:
    """OpenRLHF's vLLM importance-sampling correction: an on/off switch, a type and a threshold
    pair (flat names, the 0.10.2 ``--algo.advantage.is_correction_*`` names, and ``--use_icepop``
    of <=0.9.4) become one ``--algo.rollout_is.mode`` (none when the switch is off) and the band
    ``--algo.rollout_is.low/high``."""
    if not ctx.has(*_ROLLOUT_IS_FLAGS):
        return
    out.consumed |= set(_ROLLOUT_IS_FLAGS)
    on = ctx.has("enable_vllm_is_correction", "algo.advantage.is_correction_enable", "use_icepop")
    if not on:  # OpenRLHF reads the type and the band only with the switch on
        for name in _ROLLOUT_IS_FLAGS:
            if ctx.has(name):
                out.ignore(name, "no effect without --enable_vllm_is_correction (OpenRLHF's switch)")
        return
    kind = ctx.one("vllm_is_correction_type", "algo.advantage.is_correction_type")
    out.emit("algo.rollout_is.mode", "icepop" if ctx.has("use_icepop") else kind or "tis")
    band = ctx.get("vllm_is_truncated_threshold", "algo.advantage.is_correction_threshold")
    if band == []:  # no values: the parser says what the flag needs
        out.emit("algo.rollout_is.low")
    elif band is not None:
        if len(band) != 2:
            raise UserError(
                f"--vllm_is_truncated_threshold takes two numbers (low high), got {' '.join(band)!r}."
            )
        out.emit("algo.rollout_is.low", band[0])
        out.emit("algo.rollout_is.high", band[1])


def _eval_task_rule(ctx: _Ctx, out: _Out) -> None:
    """``--eval_task`` of ``batch_inference``: ``generate`` (HF) and ``generate_vllm`` pick the
    rollout backend of ``repulse generate``; ``rm`` belongs to ``repulse score``. A task given to the
    other command is an error naming the right one."""
    if not ctx.has("eval_task"):
        return
    out.consumed.add("eval_task")
    task = ctx.one("eval_task")
    command = out.command
    if task not in _EVAL_TASKS:
        raise UserError(
            f"--eval_task {task}: batch inference has the tasks generate, generate_vllm (repulse generate) "
            "and rm (repulse score)."
        )
    if _EVAL_TASKS[task] != command:
        raise UserError(
            f"--eval_task {task} is the job of repulse {_EVAL_TASKS[task]}, not repulse {command}: run "
            f"repulse {_EVAL_TASKS[task]} with the same flags."
        )
    if task == "generate_vllm" and not ctx.has("rollout.backend"):
        out.emit("rollout.backend", "vllm")
        out.notes.append("--eval_task generate_vllm -> --rollout.backend vllm.")
    elif task == "generate" and not ctx.has("rollout.backend"):
        out.emit("rollout.backend", "hf")


def _score_conversation_rule(ctx: _Ctx, out: _Out) -> None:
    """``--eval_task rm --input_key chosen --apply_chat_template`` without ``--output_key`` (the seed's
    conditional-SFT recipe): the input is a conversation whose last assistant turn is the response."""
    if ctx.has("apply_chat_template", "data.apply_chat_template") and not ctx.has(
        "output_key", "data.output_key"
    ):
        out.emit("data.output_key", "none")
        out.notes.append(
            "--apply_chat_template without --output_key: each input is a conversation whose last assistant "
            "turn is the response scored (--data.output_key none)."
        )


# command -> rules applied before the table, in order
_RULES = {
    "rl": (_lengths_rule, _reward_format_rule, _rollout_is_rule),
    "gcg": (_reward_format_rule, _gcg_rule),
    "generate": (_eval_task_rule,),
    "score": (_eval_task_rule, _score_conversation_rule),
}


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
    out = _Out(command=command)
    for rule in _RULES.get(command, ()):
        rule(ctx, out)
    if ctx.fork:
        fork_rule(ctx, out)
    elif command == "rl":
        _critic_from_reward_rule(ctx, out)

    tables = _tables(command)
    method = _method(ctx, out, command)
    for_method = f" --{METHOD_FIELD[command]} {method}" if method is not None else ""

    def kept(dest: str) -> bool:
        """A seed flag lands only where the command (and method) reads it, else it is ignored with a note."""
        return accepted(command, dest, method)

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
            dests = tuple(d for d in hit[1] if kept(d.partition("=")[0]))
            if not dests:
                out.ignore(f.name, f"not read by repulse {command}{for_method}")
                continue
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


# Seed flags that exist because OpenRLHF trains with DeepSpeed (flat and 0.10.2 ``--ds.*`` names).
DEEPSPEED_SEED_FLAGS: tuple[str, ...] = (
    "zero_stage",
    "adam_offload",
    "overlap_comm",
    "zpg",
    "grad_accum_dtype",
)
OFFLINE_COMMANDS: tuple[str, ...] = ("sft", "rm", "prm", "dpo", "kto", "kd")


def seed_engine_backend(argv: list[str], command: str) -> tuple[str | None, list[str]]:
    """The engine a seed command meant: ``("deepspeed", notes)``, or ``(None, notes)``.

    OpenRLHF trains with DeepSpeed, so ``--zero_stage 3`` (or ``--adam_offload``,
    ``--overlap_comm``, ``--zpg``, ``--grad_accum_dtype``, or their ``--ds.*`` forms) asks for
    ZeRO. Run on our default single-process engine such a command would train unsharded and,
    for a large model, run out of memory without saying why; so an offline command carrying
    any of them selects ``--engine.backend deepspeed`` unless ``--engine.backend`` is given.
    Our own dotted ``--engine.*`` names select nothing (the engine is then the user's choice
    and unused fields are warned about, see ``repulse.config.engine_fields``). ``repulse rl``
    keeps its engine and says so in a note.
    """
    if command not in (*OFFLINE_COMMANDS, "rl"):
        return None, []
    names = [f.name for f in _group(argv) if f.name is not None]
    if "engine.backend" in names:
        return None, []
    given = [
        n
        for n in names
        if n in DEEPSPEED_SEED_FLAGS or (n.startswith("ds.") and n[3:] in DEEPSPEED_SEED_FLAGS)
    ]
    if not given:
        return None, []
    listed = ", ".join(f"--{n}" for n in dict.fromkeys(given))
    if command == "rl":
        return None, [
            f"{listed}: OpenRLHF ran this with DeepSpeed; repulse rl trains on --engine.backend local unless "
            "you add --engine.backend deepspeed or fsdp (DeepSpeed-only settings are then reported as unused)."
        ]
    return "deepspeed", [
        f"{listed}: OpenRLHF trains with DeepSpeed, so this command runs on --engine.backend deepspeed "
        "(add --engine.backend fsdp or local to choose another engine)."
    ]


def _method(ctx: _Ctx, out: _Out, command: str) -> str | None:
    """The method the translated command runs (``--repulse.method`` for rl), or None for a command
    without methods: the flag as written, else what a rule derived, else the last ``--config`` file
    that sets it, else the default."""
    field_ = METHOD_FIELD.get(command)
    if field_ is None:
        return None
    given = ctx.one(field_)
    if given is not None:
        return given
    for dest, values in reversed(out.emitted):
        if dest == field_ and len(values) == 1:
            return values[0]
    for path in reversed(ctx.get("config") or []):
        try:
            value = flatten(load_yaml(path)).get(field_)
        except UserError:
            continue  # the parser names the bad file
        if value is not None:
            return str(value)
    return str(get_path(ROOTS[command](), field_))


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

    Returns ``(our command, ARGS)``: everything after the first ``openrlhf.cli.<module>`` token,
    preceded by ``--launch.backend ray`` for the Ray trainer (``train_ppo_ray``).
    """
    for i, tok in enumerate(tokens):
        if tok.startswith("openrlhf.cli."):
            module = tok[len("openrlhf.cli.") :]
            if module == "batch_inference":
                return _batch_inference_command(tokens[i + 1 :]), tokens[i + 1 :]
            if module not in MODULE_TO_COMMAND:
                known = ", ".join(sorted([*MODULE_TO_COMMAND, "batch_inference"]))
                raise UserError(
                    f"openrlhf.cli.{module} has no repulse counterpart to translate to (known: {known})."
                )
            rest = tokens[i + 1 :]
            if module in RAY_MODULES:  # given first, so that an explicit --launch.backend still wins
                rest = ["--launch.backend", "ray", *rest]
            return MODULE_TO_COMMAND[module], rest
    raise UserError("no 'openrlhf.cli.<module>' in the command: cannot tell which trainer it runs.")


def _batch_inference_command(args: list[str]) -> str:
    """``batch_inference`` runs ``repulse generate`` or ``repulse score``, as its ``--eval_task`` says."""
    task = _Ctx(_group(args)).one("eval_task")
    if task is None:
        raise UserError(
            "openrlhf.cli.batch_inference without --eval_task: add --eval_task generate or generate_vllm "
            "(repulse generate) or rm (repulse score)."
        )
    if task not in _EVAL_TASKS:
        raise UserError(
            f"--eval_task {task}: batch inference has the tasks generate, generate_vllm (repulse generate) "
            "and rm (repulse score)."
        )
    return _EVAL_TASKS[task]
