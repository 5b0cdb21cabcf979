"""The legacy translation: every seed command runs under our names, values intact.

Commands are split the way bash would (line continuations, ``$'...'`` ANSI-C quoting),
stripped of their launcher prefix, translated, and then every resulting flag must be a
field of our config tree and the whole argv must parse.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

from repulse.config import legacy
from repulse.config.legacy import flip_sign, split_launcher, translate_argv
from repulse.config.sections import GcgConfig, OfflineConfig, RLConfig
from repulse.config.usage import ROOTS as COMMAND_ROOTS
from repulse.config.usage import accepted
from repulse.errors import UserError

_spec = importlib.util.spec_from_file_location("seed_commands", Path(__file__).with_name("seed_commands.py"))
seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeds)  # type: ignore[union-attr]

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
PASSTHROUGH = {"config", "dry_run", "dry-run"}


# --------------------------------------------------------------------------- helpers

_ANSI_C = re.compile(r"\$'((?:[^'\\]|\\.)*)'")
_ANSI_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "e": "\x1b"}


def _ansi_c(body: str) -> str:
    """Decode bash's ``$'...'`` escapes (``\\n`` is a newline, ``\\\\`` a backslash)."""
    return re.sub(r"\\(.)", lambda m: _ANSI_ESCAPES.get(m.group(1), m.group(1)), body)


def shell_split(text: str) -> list[str]:
    """Split a seed command as bash would, for the shell-isms the seeds use.

    Backslash-newline continues a line; a newline without one (the README's PPO command
    misses a ``\\`` before ``--use_wandb``, heredoc bodies) is read as the intended
    continuation. ``$'...'`` is decoded; ``{wandb_token}`` and ``$VARS`` stay literal; a
    bare ``...`` line (an elision in the README) is dropped.
    """
    text = text.replace("\\\n", " ").replace("\n", " ")
    text = _ANSI_C.sub(lambda m: shlex.quote(_ansi_c(m.group(1))), text)
    return [tok for tok in shlex.split(text) if tok != "..."]


def valid_fields(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted name -> type of every settable field of a config dataclass tree."""
    hints = typing.get_type_hints(cls)
    out: dict[str, typing.Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(valid_fields(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


OFFLINE_FIELDS = valid_fields(OfflineConfig)
RL_FIELDS = valid_fields(RLConfig)
ROOTS = {"rl": RLConfig, "gcg": GcgConfig}


def root_fields(command: str) -> dict[str, typing.Any]:
    return valid_fields(ROOTS.get(command, OfflineConfig))


def group(argv: list[str]) -> list[tuple[str | None, list[str]]]:
    """``--a 1 2 --b`` -> ``[('a', ['1', '2']), ('b', [])]`` (the parser's rule: ``--x`` starts a flag)."""
    out: list[tuple[str | None, list[str]]] = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, val = tok[2:].partition("=")
            out.append((name, [val] if eq else []))
        elif out and out[-1][0] is not None:
            out[-1][1].append(tok)
        else:
            out.append((None, [tok]))
    return out


def as_dict(argv: list[str]) -> dict[str, list[str]]:
    """Last value(s) per flag of a translated argv."""
    return {name: vals for name, vals in group(argv) if name is not None}


def translate_seed(name: str) -> tuple[str, list[str], list[str], list[str]]:
    """(our command, legacy argv, translated argv, notes) for one seed command."""
    seed = next(s for s in seeds.SEED_COMMANDS if s.name == name)
    command, argv = split_launcher(shell_split(seed.text))
    new, notes = translate_argv(argv, command)
    return command, argv, new, notes


def ignored_notes(notes: list[str]) -> list[str]:
    return [n for n in notes if n.startswith("ignored ")]


TRANSLATABLE = [s for s in seeds.SEED_COMMANDS if s.command is not None]


# --------------------------------------------------------------------------- every seed command


@pytest.mark.parametrize("seed", TRANSLATABLE, ids=lambda s: s.name)
def test_seed_command_translates_to_valid_fields(seed):
    command, argv = split_launcher(shell_split(seed.text))
    assert command == seed.command
    new, notes = translate_argv(argv, command)
    fields = root_fields(command)
    for name, values in group(new):
        assert name is not None, f"stray token {values} in {new}"
        assert name in fields, f"--{name} (from {seed.source}) is not a field of our config"
    assert len(ignored_notes(notes)) <= 1


@pytest.mark.parametrize("seed", TRANSLATABLE, ids=lambda s: s.name)
def test_seed_command_parses(seed):
    """The translated argv goes through the real parser: types convert, no unknown option, no
    field the command (and its method) does not read (``repulse.config.usage``), and each flag
    the table renames holds the seed's value (or the table's constant) in the config."""
    from repulse.config.schema import build, convert, get_path, leaves, split_flags
    from repulse.config.usage import check_fields

    command, argv = split_launcher(shell_split(seed.text))
    new, _ = translate_argv(argv, command)
    root = ROOTS.get(command, OfflineConfig)
    cfg = build(root, [], split_flags(new))
    if command in COMMAND_ROOTS:
        check_fields(cfg, command)
    # every table-mapped flag's value reached its field(s), converted (the last one written wins)
    table, expected = leaves(root), {}
    fork = command == "rl" and any(name in legacy.FORK_FLAGS for name, _ in group(argv))
    for name, values in group(argv):
        if (command == "gcg" and name in legacy.GCG_RULE_FLAGS) or (
            name in legacy.RULE_FLAGS and (fork or name in {"prompt_max_len", "generate_max_len"})
        ):
            continue  # value-dependent rules: checked by hand below
        for dest, eq, const in (d.partition("=") for d in legacy.table_destinations(name, command) or ()):
            expected[dest] = convert([const] if eq else values or ["true"], table[dest].type, f"--{dest}")
    assert expected or command == "serve-rm", seed.name
    if command in COMMAND_ROOTS:  # a seed flag landing on a field the method does not read is dropped
        method = cfg.repulse.method if command == "rl" else None
        expected = {d: v for d, v in expected.items() if accepted(command, d, method)}
    for dest, value in expected.items():
        assert get_path(cfg, dest) == value, (seed.name, dest, value, get_path(cfg, dest))


@pytest.mark.parametrize("seed", TRANSLATABLE, ids=lambda s: s.name)
def test_seed_values_are_preserved(seed):
    """Each table-mapped flag keeps its values verbatim under its new name(s)."""
    command, argv = split_launcher(shell_split(seed.text))
    new, notes = translate_argv(argv, command)
    out_groups = group(new)
    fork = command == "rl" and any(name in legacy.FORK_FLAGS for name, _ in group(argv))
    for name, values in group(argv):
        if command == "gcg" and name in legacy.GCG_RULE_FLAGS:
            continue  # value-dependent: checked by hand in test_gcg_command_translates
        if name in legacy.RULE_FLAGS and (fork or name in {"prompt_max_len", "generate_max_len"}):
            continue  # value-dependent: checked by hand below
        dests = legacy.table_destinations(name, command)
        if dests is None:
            if name in root_fields(command):  # already our name: passes through untouched
                assert (name, values) in out_groups
            else:
                assert f"--{name}" in ignored_notes(notes)[0], name
            continue
        method = as_dict(new).get("repulse.method", ["rl"])[0] if command == "rl" else None
        landed = 0
        for dest in dests:
            dest_name, eq, const = dest.partition("=")
            expected = (dest_name, [const] if eq else values)
            if accepted(command, dest_name, method):
                assert expected in out_groups, f"--{name} {values} lost in translation"
                landed += 1
            else:  # a field this command (method) does not read: dropped, not passed on to be refused
                assert expected not in out_groups, f"--{name} lands on {dest_name}, which is not read"
        if not landed:
            assert f"--{name} (not read by repulse {command}" in ignored_notes(notes)[0] or re.search(
                rf"--{name}[ ,][^(]*\(not read by repulse {command}", ignored_notes(notes)[0]
            ), name


def test_every_seed_command_is_extracted():
    """Guard against silently losing commands when the seed file is edited."""
    assert len(seeds.SEED_COMMANDS) == 57
    assert len({s.name for s in seeds.SEED_COMMANDS}) == len(seeds.SEED_COMMANDS)


def test_gcg_command_translates(monkeypatch):
    """The README's GCG evaluation runs as ``repulse gcg``: every flag lands or is reported ignored.
    (Its --ckpt_path is a directory on the fork's cluster: the model-path check is left out here.)"""
    import repulse.config
    from repulse.config import parse_config

    monkeypatch.setattr(repulse.config, "check_model_paths", lambda cfg: None)

    command, argv, new, notes = translate_seed("gcg_eval")
    assert command == "gcg"
    out = as_dict(new)
    ckpt = argv[argv.index("--ckpt_path") + 1]
    assert out["gcg.policy"] == [ckpt]  # the trained weights, not --pretrain's base model
    assert out["gcg.eta"] == ["-4.0", "-5"]  # the reference's x and its figures' x - 1
    assert out["gcg.targets"] == ["data/harmful_behaviors_custom.csv"]
    assert out["reward.model_name_or_path"] == ["OpenAssistant/reward-model-deberta-v3-large-v2"]
    assert out["reward.input_format"] == ["pair"]  # the fork scored its DeBERTa RM on (question, answer)
    assert out["gcg.exclude_suffix_from_reward"] == [] and out["gcg.filter_ids"] == []
    ignored = ignored_notes(notes)[0]
    for flag in (
        "--pretrain",
        "--zero_stage",
        "--gradient_checkpointing",
        "--parameterization",
        "--scenario",
    ):
        assert flag in ignored
    assert any("top_k 50" in n for n in notes)  # the reference's sampler differed (spec §6.6)
    cfg = parse_config("gcg", GcgConfig, argv, None)
    g = cfg.gcg
    assert (g.steps, g.search_width, g.topk, g.batch_size, g.n_replace, g.buffer_size) == (
        250,
        512,
        256,
        512,
        1,
        0,
    )
    assert g.use_prefix_cache and g.filter_ids and g.exclude_suffix_from_reward and g.max_targets == 100
    assert g.eta == [-4.0, -5.0] and cfg.rollout.max_new_tokens == 20 and cfg.rollout.top_k == 0
    assert cfg.rollout.n_samples_per_prompt == 1000 and cfg.train.seed == 42
    # --pretrain alone names the policy; the store-true flags of the fork can be turned off here
    cfg = parse_config(
        "gcg", GcgConfig, ["--pretrain", "m", "--gcg_filter_ids", "--gcg.filter_ids", "false"], None
    )
    assert cfg.gcg.policy == "m" and cfg.gcg.filter_ids is False
    with pytest.raises(UserError, match="atk_success_criteria prefix"):
        translate_argv(["--atk_success_criteria", "prefix"], "gcg")
    with pytest.raises(UserError, match="reward_threshold"):
        translate_argv(["--reward_threshold", "low"], "gcg")


# --------------------------------------------------------------------------- shell-isms


def test_shell_split_handles_ansi_c_quoting_and_placeholders():
    _, argv, new, _ = translate_seed("readme_sft")
    assert argv[argv.index("--input_template") + 1] == "User: {}\nAssistant: "
    assert as_dict(new)["data.input_template"] == ["User: {}\nAssistant: "]
    assert as_dict(new)["logger.wandb.key"] == ["{wandb_token}"]
    # the .rst escapes its backslash inside $'...': bash gives a literal backslash-n
    _, _, rst, _ = translate_seed("nonrl_sft")
    assert as_dict(rst)["data.input_template"] == ["User: {}\\nAssistant: "]


def test_missing_line_continuation_in_readme_is_joined():
    _, argv, new, notes = translate_seed("readme_ppo_ray")
    assert argv[-2:] == ["--use_wandb", "{wandb_token}"]
    assert as_dict(new)["logger.wandb.key"] == ["{wandb_token}"]


def test_heredoc_commands_keep_variables_and_empty_values():
    _, _, new, _ = translate_seed("nonrl_rejection_sampling_sft")
    d = as_dict(new)
    assert d["data.dataset"] == ["$RM_OUTPUT"]
    assert d["model.model_name_or_path"] == ["$POLICY_MODEL_PATH"]
    assert d["data.input_template"] == [""]


# --------------------------------------------------------------------------- hand checks


def test_zero_stage_and_flat_offline_flags():
    _, _, new, notes = translate_seed("readme_rm")
    d = as_dict(new)
    assert d["engine.zero_stage"] == ["3"]
    assert d["model.model_name_or_path"] == ["OpenRLHF/Llama-3-8b-sft-mixture"]
    assert d["engine.param_dtype"] == ["bf16"]
    assert d["engine.attn_implementation"] == ["flash_attention_2"]
    assert d["engine.packing_samples"] == []  # bare booleans stay bare
    assert d["model.gradient_checkpointing_enable"] == []
    assert d["adam.lr"] == ["9e-6"]
    assert d["train.micro_batch_size"] == ["1"]
    assert any("--zero_stage -> --engine.zero_stage" in n for n in notes)


def test_toy_repulse_command():
    _, _, new, notes = translate_seed("toy_kl0_repulse")
    d = as_dict(new)
    assert d["repulse.method"] == ["repulse"]
    assert "algo.advantage.estimator" not in d  # the REINFORCE family's L_r is RLOO by construction
    assert d["repulse.beta"] == ["10"]  # --target_dist_beta -10: sign flipped
    assert d["repulse.alpha"] == ["0.01"]
    assert d["repulse.proposal_lr"] == ["3e-4"]  # --actor_learning_rate is q's lr here
    assert d["actor.adam.lr"] == ["1e-4"]  # --base_actor_learning_rate is p's
    assert d["rollout.n_samples_per_prompt"] == ["500"]
    assert d["rollout.micro_batch_size"] == ["500"]  # 1 prompt x 500 samples
    assert d["rollout.batch_size"] == ["1"]
    assert d["train.num_episodes"] == ["5"]  # --harmlessness_training_num_episodes
    assert d["repulse.q_updates_per_step"] == ["1"]  # --num_episodes in RePULSe mode
    assert d["repulse.fit_steps"] == ["50"]
    assert d["repulse.analytic_bad_word_calc"] == []
    assert d["algo.kl.init_coef"] == ["0"]
    assert d["data.max_len"] == ["1026"] and d["rollout.max_new_tokens"] == ["2"]
    assert d["engine.param_dtype"] == ["fp32"]  # no --bf16 in the fork meant fp32
    assert d["ckpt.save_steps"] == ["-1"]  # --save_steps_harmless
    assert "critic.adam.lr" not in d and "actor.optim.lr_scheduler" in d
    assert d["actor.adam.betas"] == ["0.9", "0.999"] and "critic.adam.betas" not in d  # no critic here
    assert any("sign flipped" in n for n in notes)
    # flags only PPO reads land nowhere, and the note says why
    assert "train.batch_size" not in d and "algo.max_epochs" not in d
    assert (
        "--train_batch_size, --max_epochs (not read by repulse rl --repulse.method repulse)"
        in (ignored_notes(notes)[0])
    )


def test_clutter_flags_produce_exactly_one_note():
    _, _, new, notes = translate_seed("toy_kl0_ppo")
    (note,) = ignored_notes(notes)
    for flag in (
        "--test_info_every",
        "--n_seeds_f_q",
        "--no_test_info",
        "--save_info_path",
        "--parameterization",
    ):
        assert flag in note
    assert not any(tok in new for tok in ("--test_info_every", "--n_seeds_f_q", "--no_test_info"))


def test_toy_ppo_command():
    _, _, new, _ = translate_seed("toy_kl0_ppo")
    d = as_dict(new)
    assert d["repulse.method"] == ["rl"] and d["algo.advantage.estimator"] == ["gae"]
    assert d["actor.adam.lr"] == ["1e-4"] and d["critic.adam.lr"] == ["3e-5"]
    assert d["train.num_episodes"] == ["10"]  # PPO mode: passes over the data
    assert d["algo.advantage.lambd"] == ["0.95"] and d["critic.value_clip"] == ["0.2"]  # fork defaults
    assert "repulse.proposal_lr" not in d and "repulse.q_updates_per_step" not in d


def test_reward_transform_command():
    _, _, new, notes = translate_seed("setting1_transform_b0p5_a0p3")
    d = as_dict(new)
    assert d["repulse.method"] == ["reward_transform"]
    assert d["repulse.reward_transform"] == ["minus_alpha_exp_beta_r"]
    assert d["repulse.transform_a"] == ["0.3"]  # --alpha is the default transform a
    assert d["repulse.transform_b"] == ["0.5"]  # --target_dist_beta -0.5, flipped
    assert "algo.advantage.estimator" not in d
    assert "repulse.beta" not in d and "repulse.proposal_lr" not in d
    (note,) = ignored_notes(notes)
    assert "--actor_learning_rate" in note and "--critic_learning_rate" in note


def test_reinforce_and_p_proposal_commands():
    d = as_dict(translate_seed("toy_kl10_reinforce")[2])
    assert d["repulse.method"] == ["reinforce"] and d["algo.kl.init_coef"] == ["10"]
    assert "repulse.beta" not in d  # --target_dist_beta 0 is unused by plain REINFORCE
    d = as_dict(translate_seed("setting1_p_proposal_a0p1")[2])
    assert d["repulse.method"] == ["p_proposal"]
    assert d["repulse.beta"] == ["30"] and d["repulse.alpha"] == ["0.1"]
    assert d["reward.max_len"] == ["300"]
    assert d["repulse.save_negdata"] == [
        "/mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2/negdata.jsonl"
    ]
    assert d["repulse.negdata_threshold"] == ["-5"]
    assert d["eval.dataset"] == ["Silent-Zebra/10k_mixed_singleturn_2_1"]
    assert d["eval.n_samples_per_prompt"] == ["5"] and d["eval.temperature"] == ["1.0"]


def test_setting2_counts_samples_not_prompts():
    d = as_dict(translate_seed("setting2_ppo")[2])
    assert d["rollout.micro_batch_size"] == ["20"]  # 5 prompts x 4 samples
    assert d["rollout.batch_size"] == ["20"] and d["rollout.n_samples_per_prompt"] == ["4"]
    assert d["train.micro_batch_size"] == ["20"] and d["train.batch_size"] == ["80"]
    assert d["engine.param_dtype"] == ["bf16"]
    assert d["data.max_len"] == ["1124"] and d["rollout.max_new_tokens"] == ["100"]


@pytest.mark.parametrize(
    "seed, fmt",
    [("setting1_repulse_beta10", "pair"), ("setting2_ppo", "chat"), ("toy_kl0_repulse", None)],
)
def test_reward_input_format_follows_the_reward_model_as_in_the_fork(seed, fmt):
    """Setting 1's DeBERTa RM scores (question, answer) pairs, Setting 2's Skywork RM its own chat
    template; the toy's ToxicityModel the whole text (the default, concat)."""
    _, _, new, notes = translate_seed(seed)
    d = as_dict(new)
    assert d.get("reward.input_format") == ([fmt] if fmt else None)
    assert any("--reward.input_format" in n for n in notes) == (fmt is not None)


def test_upstream_ppo_critic_starts_from_the_reward_model():
    d = as_dict(translate_seed("readme_ppo_ray")[2])
    assert d["critic.model_name_or_path"] == ["OpenRLHF/Llama-3-8b-rm-700k"]
    assert "repulse.method" not in d and "algo.advantage.lambd" not in d
    assert d["algo.max_epochs"] == ["1"]  # PPO epochs per rollout batch
    assert d["vllm.num_engines"] == ["4"] and d["vllm.enable_sleep"] == []
    d = as_dict(translate_seed("options_reinforce_ray")[2])
    assert d["algo.advantage.estimator"] == ["reinforce"] and "critic.model_name_or_path" not in d


def test_0102_names():
    d = as_dict(translate_seed("v0102_sft_lora")[2])
    assert d["model.lora.rank"] == ["64"] and d["model.lora.alpha"] == ["64"]
    assert d["engine.zero_stage"] == ["3"] and d["engine.packing_samples"] == []
    d = as_dict(translate_seed("v0102_sft_muon")[2])
    assert d["optim.name"] == ["muon"] and d["muon.lr"] == ["0.02"]
    assert d["optim.lr_scheduler"] == ["cosine_with_min_lr"] and d["optim.max_norm"] == ["1.0"]
    new, _ = translate_argv(
        ["--ds.lora.target_modules", "q_proj", "v_proj", "--ds.value_head_prefix", "score"], "rm"
    )
    assert new == ["--model.lora.target_modules", "q_proj", "v_proj", "--model.value_head_prefix", "score"]
    new, _ = translate_argv(
        ["--actor.optim", "muon", "--critic.lr_scheduler", "constant", "--train.max_epochs", "2"], "rl"
    )
    assert new == [
        "--actor.optim.name",
        "muon",
        "--critic.optim.lr_scheduler",
        "constant",
        "--algo.max_epochs",
        "2",
    ]
    new, _ = translate_argv(["--muon.no_nesterov"], "sft")
    assert new == ["--muon.nesterov", "false"]


def test_nargs_and_negative_values():
    new, _ = translate_argv(["--reward_clip_range", "-10", "10", "--adam_betas", "0.9", "0.95"], "rl")
    assert new == [
        "--reward.clip_range", "-10", "10",
        "--actor.adam.betas", "0.9", "0.95", "--critic.adam.betas", "0.9", "0.95",
    ]  # fmt: skip
    new, _ = translate_argv(["--reward.clip_range", "-10", "10", "--adam.betas", "0.9", "0.95"], "rl")
    assert new == ["--reward.clip_range", "-10", "10", "--adam.betas", "0.9", "0.95"]  # ours: untouched
    new, _ = translate_argv(["--reward_tokens", "+", "-", "--placeholder_token", "ки"], "prm")
    assert new == ["--model.reward_tokens", "+", "-", "--model.placeholder_token", "ки"]


def test_passthrough_equals_form_and_unknown_flags():
    argv = ["--config", "a.yaml", "--dry-run", "--data.max_len", "64", "--no_such_flag", "3"]
    assert translate_argv(argv, "sft") == (argv, [])
    new, _ = translate_argv(["--pretrain=toy_assets/llama", "--zero_stage=3"], "sft")
    assert new == ["--model.model_name_or_path=toy_assets/llama", "--engine.zero_stage=3"]


def test_serve_rm_flags():
    argv = ["--reward_pretrain", "toy_assets/rm", "--port", "5000", "--bf16", "--value_head_prefix", "score"]
    new, notes = translate_argv(argv + ["--normalize_reward", "--ds.param_dtype", "bf16"], "serve-rm")
    assert new == [
        "--reward.model_name_or_path",
        "toy_assets/rm",
        "--port",
        "5000",
        "--reward.normalize_enable",
    ]
    for flag in ("--bf16", "--value_head_prefix", "--ds.param_dtype"):
        assert flag in ignored_notes(notes)[0]


def test_unsupported_features_fail_loudly():
    with pytest.raises(UserError, match="agent_func_path"):
        translate_argv(["--agent_func_path", "agent.py", "--enable_ema"], "rl")
    with pytest.raises(UserError, match="lora_rank"):
        translate_argv(["--lora_rank", "8"], "rl")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["--do_harmlessness_training", "--harmlessness_training_loss_type", "neg_reinforce"],
            "neg_reinforce",
        ),
        (["--actor_loss_type", "dpg"], "proposal"),
        (["--rm_type", "indicator_below_threshold"], "rm_type"),
        (["--parameterization", "modulation_model"], "parameterization"),
        (
            [
                "--do_harmlessness_training",
                "--harmlessness_training_loss_type",
                "neg_training",
                "--actor_loss_type",
                "sixo",
            ],
            "CTL",
        ),
        (
            ["--heldout_prompt_data", "x", "--input_key", "prompt", "--heldout_input_key", "question"],
            "same key",
        ),
    ],
)
def test_unsupported_fork_combinations(argv, match):
    with pytest.raises(UserError, match=match):
        translate_argv(argv, "rl")


def test_reward_transform_explicit_parameters_win():
    argv = [
        "--do_harmlessness_training", "--harmlessness_training_loss_type", "reinforce",
        "--reinforce_baseline_type", "expectation", "--reward_transform", "minus_alpha_exp_beta_r",
        "--alpha", "5", "--target_dist_beta", "-1", "--rew_trans_alpha", "2", "--rew_trans_beta", "-0.3",
    ]  # fmt: skip
    new, notes = translate_argv(argv, "rl")
    d = as_dict(new)
    assert d["repulse.transform_a"] == ["2"] and d["repulse.transform_b"] == ["0.3"]
    note = ignored_notes(notes)[0]
    assert "--alpha" in note and "--target_dist_beta" in note


def test_user_flags_in_our_names_win_over_derived_ones():
    new, _ = translate_argv(["--target_dist_beta", "-10", "--do_harmlessness_training",
                             "--harmlessness_training_loss_type", "neg_training", "--actor_loss_type", "ctl",
                             "--reinforce_baseline_type", "expectation", "--repulse.beta", "3"], "rl")  # fmt: skip
    assert as_dict(new)["repulse.beta"] == ["3"]  # the parser keeps the last occurrence


def test_flip_sign():
    assert flip_sign("-10") == "10"
    assert flip_sign("-0.1") == "0.1"
    assert flip_sign("3e-4") == "-3e-4"
    assert flip_sign("0") == "0" and flip_sign("-0") == "0"
    assert flip_sign("+2") == "-2"


def test_commands_without_seed_counterpart_pass_through():
    argv = ["--tail.policy", "x", "--pretrain", "y"]
    assert translate_argv(list(argv), "eval-tail") == (argv, [])


# --------------------------------------------------------------------------- coverage of the spec's flag tables

# 0.10.2 / flat flags naming features repulse does not have: translation refuses them (UserError).
EXPECTED_UNSUPPORTED = {
    ("--train.agent_func_path", "rl"), ("--train.enable_ema", "rl"), ("--train.ema_beta", "rl"),
    ("--data.image_key", "rl"), ("--data.max_images_per_prompt", "rl"), ("--ds.load_in_4bit", "rl"),
    ("--ds.lora.alpha", "rl"), ("--ds.lora.dropout", "rl"), ("--ds.lora.rank", "rl"),
    ("--ds.lora.target_modules", "rl"), ("--lora_rank", "rl"), ("--lora_alpha", "rl"), ("--lora_dropout", "rl"),
    ("--target_modules", "rl"), ("--load_in_4bit", "rl"), ("--agent_func_path", "rl"), ("--enable_ema", "rl"),
    ("--ema_beta", "rl"), ("--image_key", "rl"), ("--max_images_per_prompt", "rl"),
}  # fmt: skip


def _sample(tp: typing.Any, default: typing.Any) -> tuple[list[str], typing.Any]:
    """Flag tokens for a field of type ``tp`` and the value the config must then hold, chosen
    to differ from ``default`` so that a flag that is dropped (the default stays) is caught."""
    from repulse.config.schema import _unwrap_optional

    inner, _ = _unwrap_optional(tp)
    if inner is bool:
        return ([], True) if default is not True else (["false"], False)  # a bare switch, or off
    if inner is int:
        value = (default if isinstance(default, int) else 0) + 2
        return [str(value)], value
    if inner is float:
        value = (default if isinstance(default, float) else 0.0) + 0.375
        return [repr(value)], value
    if inner is str:
        return ["legacy-value"], "legacy-value"
    (item,) = typing.get_args(inner)  # list[float] / list[str] / list[int]
    tokens = {float: ["0.25", "0.75"], int: ["5", "7"], str: ["alpha", "beta"]}[item]
    return tokens, [item(t) for t in tokens]


def _const(tp: typing.Any, text: str) -> typing.Any:
    """A table constant (``"a.b=v"``) as the config holds it."""
    from repulse.config.schema import _unwrap_optional

    inner, _ = _unwrap_optional(tp)
    if inner is bool:
        return text.lower() == "true"
    return inner(text)


def _names_flag(note: str, flag: str) -> bool:
    """``flag`` as a whole word of ``note`` (``--zpg`` is not named by ``--zpg_size``)."""
    return re.search(rf"(?<![\w.-]){re.escape(flag)}(?![\w-]|\.\w)", note) is not None


# Flags translated by a value-dependent rule (no table entry): their hand-written cases,
# flag -> (argv, the fields it must set). The IS-correction switch, type and band of OpenRLHF
# (flat and 0.10.2 names) become one --algo.rollout_is.mode and its band.
RULE_CASES: dict[str, tuple[list[str], dict[str, typing.Any]]] = {
    "--enable_vllm_is_correction": (["--enable_vllm_is_correction"], {"algo.rollout_is.mode": "tis"}),
    "--algo.advantage.is_correction_enable": (
        ["--algo.advantage.is_correction_enable"],
        {"algo.rollout_is.mode": "tis"},
    ),
    "--vllm_is_correction_type": (
        ["--enable_vllm_is_correction", "--vllm_is_correction_type", "icepop"],
        {"algo.rollout_is.mode": "icepop"},
    ),
    "--algo.advantage.is_correction_type": (
        ["--algo.advantage.is_correction_enable", "--algo.advantage.is_correction_type", "icepop"],
        {"algo.rollout_is.mode": "icepop"},
    ),
    "--vllm_is_truncated_threshold": (
        ["--enable_vllm_is_correction", "--vllm_is_truncated_threshold", "0.25", "4.5"],
        {"algo.rollout_is.low": 0.25, "algo.rollout_is.high": 4.5},
    ),
    "--algo.advantage.is_correction_threshold": (
        ["--algo.advantage.is_correction_enable", "--algo.advantage.is_correction_threshold", "0.25", "4.5"],
        {"algo.rollout_is.low": 0.25, "algo.rollout_is.high": 4.5},
    ),
}


def _check_rule_case(flag: str, command: str) -> None:
    from repulse.config.schema import build, get_path, leaves, split_flags

    argv, want = RULE_CASES[flag]
    new, _ = translate_argv(argv, command)
    root = ROOTS.get(command, OfflineConfig)
    cfg = build(root, [], split_flags(new))
    table = leaves(root)
    for dest, value in want.items():
        assert value != table[dest].default, (flag, dest)  # else a dropped flag would pass
        assert get_path(cfg, dest) == value, f"{argv} ({command}) -> --{dest} = {get_path(cfg, dest)!r}"


def _check_flag(flag: str, command: str) -> None:
    """``flag`` with a value for ``command`` does what the translation table declares for it:

    - refused: a ``UserError`` naming it, and only for the flags listed as refused;
    - ignored: no tokens left, and one note naming the flag with the table's reason;
    - renamed: every destination the table declares holds the flag's value converted to the
      field's type (or the declared constant) once the translated argv is parsed; other flags
      the translation adds (engine choices, notes) are allowed, as long as they parse;
    - already our name: it lands on its own field, converted;
    - translated by a value-dependent rule: its hand-written case in ``RULE_CASES``.

    The value differs from the field's default, so a flag that lands nowhere fails.
    """
    from repulse.config.schema import build, get_path, leaves, split_flags

    if flag in RULE_CASES:
        return _check_rule_case(flag, command)
    name = flag[2:]
    root = ROOTS.get(command, OfflineConfig)
    table = leaves(root)
    declared = legacy._lookup(name, legacy._tables(command))
    dests = legacy.table_destinations(name, command)
    if dests is not None:
        targets = [d.partition("=") for d in dests]
    else:
        targets = [(name, "", "")] if name in table else []
    value_dest = next((d for d, eq, _ in targets if not eq), None)
    tokens, expected = (
        _sample(table[value_dest].type, table[value_dest].default) if value_dest else ([], None)
    )
    try:
        new, notes = translate_argv([flag, *tokens], command)
    except UserError as err:
        assert (flag, command) in EXPECTED_UNSUPPORTED, f"{flag} ({command}) refused unexpectedly: {err}"
        assert declared is not None and declared[0] == "unsupported", (flag, command, declared)
        assert _names_flag(str(err), flag), str(err)
        return
    assert (flag, command) not in EXPECTED_UNSUPPORTED, f"{flag} ({command}) was not refused"
    if declared is not None and declared[0] == "ignored":
        (note,) = ignored_notes(notes)
        assert _names_flag(note, flag) and declared[1] in note, (flag, note)
        assert new == [], f"{flag} ({command}) is declared ignored but left {new}"
        return
    assert targets, (
        f"{flag} ({command}) is neither in the table nor a field of our config (nor in RULE_CASES)"
    )
    if command in COMMAND_ROOTS and not any(accepted(command, d, None) for d, _, _ in targets):
        # a field the command does not read: a seed name is dropped with a note naming the flag and the
        # command; our own name is kept and refused when the config is checked
        if not new:
            (note,) = ignored_notes(notes)
            assert _names_flag(note, flag) and f"not read by repulse {command}" in note, (flag, note)
            return
        from repulse.config.usage import check_fields

        with pytest.raises(UserError, match=f"is not read by repulse {command}"):
            check_fields(build(root, [], split_flags(new)), command)
        return
    cfg = build(root, [], split_flags(new))
    for dest, eq, const in targets:
        want = _const(table[dest].type, const) if eq else expected
        got = get_path(cfg, dest)
        assert got == want, (
            f"{flag} {tokens} ({command}) -> --{dest} = {got!r}, expected {want!r} (from {new})"
        )
        # a constant equal to its field's default cannot show in the value: the argv must name it
        assert f"--{dest}" in [t.partition("=")[0] for t in new], (flag, dest, new)


@pytest.mark.parametrize(("flag", "clis"), sorted(seeds.FLAGS_0102.items()))
def test_every_0102_flag_has_a_destination(flag, clis):
    for cli in clis:
        _check_flag(flag, cli)
        if cli in ("sft", "rm", "dpo"):  # PRM/KTO/KD share the offline root
            _check_flag(flag, "kto")


@pytest.mark.parametrize(("flag", "clis"), sorted(seeds.MIGRATION_OLD_FLAGS.items()))
def test_every_old_flat_flag_has_a_destination(flag, clis):
    for cli in clis:
        _check_flag(flag, cli)


def test_every_fork_flag_is_handled():
    handled = set(legacy._RL.renames) | set(legacy._RL.ignored) | set(legacy._RL.unsupported)
    handled |= legacy.RULE_FLAGS | set(legacy._TRAIN_COMMON.renames)
    for flag in seeds.FORK_FLAGS_SPEC:
        assert flag[2:] in handled, flag
    generic = {"top_k", "lr_scheduler", "gradient_accumulation_steps"}
    assert {f[2:] for f in seeds.FORK_FLAGS_SPEC} - generic == set(legacy.FORK_FLAGS)


@pytest.mark.parametrize(("command", "argv"), seeds.SEED_OPTION_FLAGS, ids=lambda x: str(x))
def test_documented_option_flags(command, argv):
    new, _ = translate_argv(argv, command)
    fields = root_fields(command)
    for name, _ in group(new):
        assert name in fields, f"{argv} -> --{name}"


# --------------------------------------------------------------------------- recipes

RECIPE_DIR_COMMAND = {
    "sft": "sft",
    "rm": "rm",
    "prm": "prm",
    "dpo": "dpo",
    "kto": "kto",
    "kd": "kd",
    "rl": "rl",
}
RECIPE_DIR_COMMAND["repulse"] = "rl"
# recipes/workflows/ holds pipeline configs (and the models they start from): tests/workflows checks them.
RECIPE_FILES = sorted(p for p in RECIPES.glob("*/*.yaml") if p.parent.name != "workflows")


def _flatten(d: dict, prefix: str = "") -> dict[str, typing.Any]:
    out: dict[str, typing.Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_keys_are_fields_of_the_right_root(path):
    command = RECIPE_DIR_COMMAND[path.parent.name]
    data = yaml.safe_load(path.read_text())
    flat = _flatten(data)
    fields = root_fields(command)
    for key in flat:
        assert key in fields, f"{path.relative_to(REPO)}: '{key}' is not a field of our {command} config"
    assert flat["ckpt.output_dir"] == f"runs/recipes/{path.parent.name}/{path.stem}"
    for key, value in flat.items():
        if key.endswith(("model_name_or_path", "dataset", "prompt_dataset", "teacher_model")) and value:
            assert str(value).startswith("toy_assets/"), f"{path.name}: {key}={value} is not a toy asset"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads_with_the_parser(path):
    from repulse.config.schema import build

    build(RLConfig if RECIPE_DIR_COMMAND[path.parent.name] == "rl" else OfflineConfig, [str(path)], [])


def test_every_seed_command_has_a_recipe():
    readme = (RECIPES / "README.md").read_text()
    for seed in TRANSLATABLE:
        assert f"`{seed.name}`" in readme, f"no recipe lists the seed command {seed.name}"
    for path in RECIPE_FILES:
        assert f"{path.parent.name}/{path.name}" in readme, f"{path} is not in recipes/README.md"
