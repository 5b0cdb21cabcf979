"""Every training command of the RePULSe README runs, as copied, after replacing the launcher
with ``repulse rl`` and the Hub names with toy paths (sizes shrunk by appended flags)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "config"))

from seed_commands import SEED_COMMANDS  # noqa: E402
from test_legacy import shell_split  # noqa: E402

from repulse.config import parse_config  # noqa: E402
from repulse.config.legacy import split_launcher  # noqa: E402
from repulse.config.sections import RLConfig  # noqa: E402
from repulse.trainers.rl import validate  # noqa: E402

# "..."-elided fragments (e.g. the reward-function snippet) are not runnable commands; the
# ``train_ppo_ray`` ones select the Ray backend and its multi-GPU placement: a seed Ray command runs
# under ``ray job submit`` in tests/launch/test_ray_job.py, with the placement shrunk to CPU nodes.
README = [
    c
    for c in SEED_COMMANDS
    if c.source.startswith("repulse-readme")
    and c.command == "rl"
    and "\n  ...\n" not in c.text
    and "openrlhf.cli.train_ppo_ray" not in c.text
]
HUB_FLAGS = {"--pretrain", "--reward_pretrain", "--critic_pretrain", "--prompt_data", "--heldout_prompt_data"}


def _toy_argv(text: str, lm: Path, rm: Path, prompts: Path, out: Path) -> list[str]:
    command, argv = split_launcher(shell_split(text))
    assert command == "rl"
    swap = {
        "--pretrain": lm,
        "--critic_pretrain": lm,
        "--reward_pretrain": rm,
        "--prompt_data": prompts,
        "--heldout_prompt_data": prompts,
    }
    argv = [str(swap[argv[i - 1]]) if i and argv[i - 1] in HUB_FLAGS else a for i, a in enumerate(argv)]
    if "--use_wandb" in argv:  # an account key, like the Hub names: wandb is an optional extra
        i = argv.index("--use_wandb")
        del argv[i : i + 2]
    shrink = [
        "--rollout.batch_size", "1", "--rollout.n_samples_per_prompt", "4",
        "--rollout.micro_batch_size", "8", "--rollout.max_new_tokens", "2",
        "--train.micro_batch_size", "4", "--train.max_steps", "3", "--train.num_episodes", "3", "--repulse.fit_steps", "1",
        "--engine.param_dtype", "fp32", "--actor.gradient_checkpointing_enable", "false",
        "--ckpt.output_dir", str(out), "--logger.progress_bar", "false",
    ]  # fmt: skip
    if parse_config("rl", RLConfig, argv + shrink, None).repulse.method == "rl":
        shrink += [
            "--train.batch_size",
            "4",
        ]  # only the PPO family reads it (the others: one batch per rollout)
    return argv + shrink


def test_the_readme_has_every_method():
    assert len(README) >= 25
    methods = set()
    for c in README:
        cfg = parse_config(
            "rl", RLConfig, _toy_argv(c.text, Path("lm"), Path("rm"), Path("p.jsonl"), Path("o")), None
        )
        methods.add(cfg.repulse.method if cfg.repulse.method != "rl" else cfg.algo.advantage.estimator)
    assert methods == {"gae", "reinforce", "reward_transform", "p_proposal", "repulse"}


@pytest.fixture(scope="module")
def hub_like_lm_rm(demo_lm_rm, tmp_path_factory):
    """The demo's LM and RM with a chat template, as the seed's Hub models have (Setting 2 applies
    one to the prompts and to the reward model's input); the demo's word-level tokenizer has none."""
    import shutil

    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("hub_like")
    out = []
    for src in demo_lm_rm:
        dst = root / Path(src).name
        shutil.copytree(src, dst)
        tok = AutoTokenizer.from_pretrained(dst)
        tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
        tok.save_pretrained(dst)
        out.append(dst)
    return tuple(out)


@pytest.mark.slow
def test_each_readme_command_runs_three_steps(toy, hub_like_lm_rm, tmp_path):
    from repulse.trainers.rl import run as run_rl

    lm, rm = hub_like_lm_rm
    # the toy and Setting 1 commands read the key 'prompt'; Setting 2 reads chat messages
    prompts = tmp_path / "this_man_is_a.jsonl"
    row = {"prompt": "This man is a", "context_messages": [{"role": "user", "content": "This man is a"}]}
    prompts.write_text(json.dumps(row) + "\n")
    for c in README:
        out = tmp_path / "runs" / c.name
        cfg = parse_config("rl", RLConfig, _toy_argv(c.text, lm, rm, prompts, out), validate)
        run_rl(cfg)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3], c.name
        assert (out / "config.json").is_file(), c.name


@pytest.mark.slow
def test_every_repulse_recipe_runs(toy, hub_like_lm_rm, tmp_path, monkeypatch):
    """Every recipe of recipes/repulse as written (relative toy_assets/ paths; the toy, Setting 1
    with its (question, answer) pair reward and Setting 2 with its chat-template reward), one
    step each."""
    import shutil

    from repulse.trainers.rl import run as run_rl

    lm, rm = hub_like_lm_rm
    monkeypatch.chdir(tmp_path)
    shutil.copytree(toy.root, tmp_path / "toy_assets")
    shutil.copytree(rm, tmp_path / "toy_assets" / "rm")
    recipes = sorted((Path(__file__).resolve().parents[2] / "recipes" / "repulse").glob("*.yaml"))
    assert len(recipes) >= 30
    for recipe in recipes:
        out = tmp_path / "runs" / recipe.stem
        argv = [
            "--config",
            str(recipe),
            "--train.max_steps",
            "1",
            "--repulse.fit_steps",
            "1",
            "--ckpt.output_dir",
            str(out),
        ]
        run_rl(parse_config("rl", RLConfig, argv, validate))
        assert (out / "config.json").is_file(), recipe.name
