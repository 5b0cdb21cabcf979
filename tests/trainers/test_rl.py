"""``repulse rl`` end to end on the toy: the first update of a fresh rollout is exactly on-policy,
every advantage estimator raises a programmatic reward, a trained reward model's score rises,
a reward server gives the in-process model's scores, 2 processes reproduce 1, SIGKILL + resume
is bit-identical, and bad input gets a one-paragraph error.

The policy is the toy's random-init Llama (~0.1M parameters, vocabulary 778), prompts are the
toy's 64 RL prompts, responses are at most 8 tokens, KL is off unless a test says otherwise.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from same_update import approx, assert_same_update
from test_rm import ROOT, TEMPLATE, assert_clean_error, cfg_file, cli, metrics, needs_deepspeed, torchrun

from repulse.config.sections import RLConfig

REWARD_FILE = Path(__file__).with_name("rl_reward_funcs.py")


# --------------------------------------------------------------------------- helpers


def rl_cfg(toy, out: Path, **over) -> RLConfig:
    """8 prompts x 4 samples x <= 8 new tokens per step, one optimizer step per rollout (train
    batch = all 32 samples), lr 1e-2 constant for actor and critic, the ``e``-fraction reward,
    2 episodes over the 64 prompts = 16 steps. ``over``: ``section__name=value`` (nested too,
    e.g. ``actor__adam__lr``)."""
    cfg = RLConfig()
    cfg.actor.model_name_or_path = str(toy.llama)
    cfg.reward.remote_url = str(REWARD_FILE)
    cfg.data.prompt_dataset = str(toy.prompts)
    cfg.data.max_len = 64
    cfg.rollout.batch_size = 8
    cfg.rollout.n_samples_per_prompt = 4
    cfg.rollout.micro_batch_size = 32
    cfg.rollout.max_new_tokens = 8
    cfg.train.batch_size = cfg.train.micro_batch_size = 32
    cfg.train.num_episodes = 2
    cfg.algo.kl.init_coef = 0.0
    for role in (cfg.actor, cfg.critic):
        role.adam.lr = 1e-2
        role.optim.lr_scheduler = "constant"
        role.optim.lr_warmup_ratio = 0.0
    cfg.ckpt.output_dir = str(out)
    cfg.logger.progress_bar = False
    for key, value in over.items():
        *path, name = key.split("__")
        node = cfg
        for part in path:
            node = getattr(node, part)
        assert hasattr(node, name), key
        setattr(node, name, value)
    return cfg


def run_rl(cfg: RLConfig) -> list[dict]:
    """Run in this process; the per-step rows of metrics.jsonl."""
    from repulse.trainers.rl import run, validate

    validate(cfg)
    assert run(cfg) == 0
    return steps(Path(cfg.ckpt.output_dir))


def steps(out: Path) -> list[dict]:
    return [r for r in metrics(out) if "reward" in r]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def first_last(rows: list[dict], k: int = 4) -> tuple[float, float]:
    """Mean sampled reward of the first k and of the last k steps."""
    r = [row["reward"] for row in rows]
    return mean(r[:k]), mean(r[-k:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(out) / "model.safetensors")


# --------------------------------------------------------------------------- 1. exactly on-policy


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_first_update_of_a_fresh_rollout_has_ratio_exactly_one(toy, tmp_path, arch):
    """The old log-probs are computed with the update's own micro-batches (dropout off), so on the
    first update of each rollout π/π_old is exactly 1: mean |log π − log π_old| == 0.0,
    approx KL == 0.0, ratio == 1.0, clip fraction == 0.0 (no tolerance). Exercised with a
    critic (gae), a sampling temperature of 0.8 (the logits are divided in both forwards),
    2 accumulated micro-batches, and a KL-in-reward reference, whose KL to the policy is
    also exactly 0.0 at step 1 (the reference is the policy's start). Measured sensitivity: old
    log-probs taken at temperature 1 instead give a mean |log ratio| of 0.03. The toy GPT-2 has
    dropout 0.1 (attention, residual, embeddings), which RL switches off in every forward; with
    it on in the training forward, the ratio at step 1 is not 1."""
    over = dict(
        actor__model_name_or_path=str(getattr(toy, arch)),
        algo__advantage__estimator="gae",
        algo__kl__init_coef=0.05,
        rollout__temperature=0.8,
        train__micro_batch_size=16,
        train__max_steps=3,
    )
    rows = run_rl(rl_cfg(toy, tmp_path / "one_update", **over))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # one optimizer step per rollout: every micro-batch sees fresh weights
        assert r["policy_abs_log_ratio"] == 0.0, r
        assert r["policy_kl"] == 0.0 and r["ratio"] == 1.0 and r["clip_frac"] == 0.0, r
    assert rows[0]["kl"] == 0.0
    assert rows[-1]["kl"] != 0.0  # the policy has moved away from the reference since

    # control: 2 optimizer steps per rollout; the second one sees moved weights, so the metric is
    # not trivially zero
    two = run_rl(
        rl_cfg(toy, tmp_path / "two_updates", train__batch_size=16, **{**over, "train__max_steps": 1})
    )
    assert two[0]["policy_abs_log_ratio"] > 1e-6, two[0]


def test_overlong_penalty_is_relative_to_the_token_budget(toy, tmp_path, monkeypatch):
    """DAPO's overlong penalty −min(len − (L_max − B), B)/B·f uses L_max = --rollout.max_new_tokens,
    not the width of the batch: here both responses stop early (3 and 2 tokens incl. EOS, so
    the batch is 3 wide). With L_max 8 and B 4 neither is penalised (regression: L_max was the
    batch width 3, giving −1 and −0.75); with L_max 4 they get −0.75 and −0.5 (exact)."""
    from repulse.data.prompts import PromptDataset
    from repulse.data.sources import load_rows
    from repulse.models.loading import load_tokenizer
    from repulse.rl.rollout import Samples, left_pad
    from repulse.trainers.rl.local_roles import build_roles
    from repulse.trainers.rl.methods.ppo import PPOFamily

    class TwoFixedResponses:
        """A rollout engine that answers [10, 11, EOS] and [12, EOS]: lengths 3 and 2."""

        weight_version = 0

        def generate(self, prompt_ids, n, sampling):
            ids, mask = left_pad(prompt_ids, pad)
            response = torch.tensor([[10, 11, eos], [12, eos, pad]])
            action = torch.tensor([[1, 1, 1], [1, 1, 0]])
            seq, attn = torch.cat([ids, response], 1), torch.cat([mask, action], 1)
            return Samples(seq, attn, action, ids.shape[1], torch.arange(2), torch.zeros(2, dtype=torch.bool))

    for budget, penalty in ((8, [0.0, 0.0]), (4, [-0.75, -0.5])):
        over = dict(algo__advantage__estimator="reinforce", rollout__n_samples_per_prompt=1)
        over.update(rollout__max_new_tokens=budget, reward__overlong_buffer_len=4.0)
        cfg = rl_cfg(toy, tmp_path / str(budget), **over)
        tok = load_tokenizer(str(toy.llama), padding_side="left")
        pad, eos = tok.pad_token_id, tok.eos_token_id
        roles = build_roles(cfg, set(), torch.device("cpu"), 1, 1, tok)
        roles.policy.rollout = TwoFixedResponses()
        items = PromptDataset(load_rows(str(toy.prompts), "train", 2, "--data.prompt_dataset"), tok, cfg.data)
        method = PPOFamily(cfg, roles, accum=1, updates=1)
        exp, _ = method.experience(method.rollout(list(items)), {})
        assert exp.rewards.tolist() == pytest.approx(
            (exp.raw_rewards + torch.tensor(penalty)).tolist(), abs=1e-6
        )


# --------------------------------------------------------------------------- 2. every estimator learns


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator", ["gae", "reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo"]
)
def test_every_estimator_raises_a_programmatic_reward(toy, tmp_path, estimator):
    """Reward: the fraction of response characters that are ``e`` (``rl_reward_funcs.py``, loaded
    from its path by ``--reward.remote_url``), in [0, 1]. The random-init policy starts at ≈0.11
    with a per-sample std ≈0.05, so the mean over the first 4 steps (128 samples) has a
    standard error ≈0.005. After 16 steps at lr 1e-2 every estimator reaches ≈0.22–0.28.
    Measured rises of the last-4-step mean over the first-4-step mean, seeds 42/1/2/3:
    0.11–0.17. Required rise: 0.06, over ten standard errors and about half the slowest
    measured rise. Broken updates fail it: sign-flipped advantages measured −0.07/−0.08
    (reinforce, rloo), zero advantages −0.01 (gae)."""
    rows = run_rl(rl_cfg(toy, tmp_path / estimator, algo__advantage__estimator=estimator))
    assert [r["step"] for r in rows] == list(range(1, 17))
    for key in ("reward", "policy_loss", "actor_grad_norm"):
        assert all(math.isfinite(r[key]) for r in rows), key
    if estimator == "gae":
        assert all(math.isfinite(r["value_loss"]) for r in rows)
    first, last = first_last(rows)
    assert last >= first + 0.06, (first, last, [round(r["reward"], 3) for r in rows])


# --------------------------------------------------------------------------- 3./4. reward models


def rm_cfg(toy, rm: Path, out: Path, **over) -> RLConfig:
    """RL on the RM's score of ``User: <prompt>\\nAssistant: <response>`` (the RM's training format)."""
    cfg = rl_cfg(toy, out, reward__remote_url=None, reward__model_name_or_path=str(rm), **over)
    cfg.data.input_template = TEMPLATE
    return cfg


@pytest.mark.slow
def test_rloo_raises_a_trained_reward_models_score(toy, toy_rm, tmp_path):
    """RLOO at lr 2e-2 on the reward model's score, with a greedy evaluation on 16 prompts before
    the first step and after every episode (``--eval.steps`` left at -1: once per episode).
    Sampled reward: starts at ≈ −1.0 with a per-sample std ≈0.5 (standard error of a 4-step
    mean over 128 samples ≈0.05); measured rises of the last-4 over the first-4-step mean over
    seeds 42/1/2: 3.2/1.9/2.3. Required: 0.5 (one initial per-sample std, ten standard
    errors). Greedy eval: −1.25 at step 0, measured 2.0–2.2 at step 16; required rise: 1.0."""
    over = dict(
        algo__advantage__estimator="rloo",
        actor__adam__lr=2e-2,
        eval__dataset=str(toy.prompts),
        eval__max_samples=16,
        eval__temperature=0.0,
    )
    out = tmp_path / "rl"
    rows = run_rl(rm_cfg(toy, toy_rm, out, **over))
    assert len(rows) == 16
    first, last = first_last(rows)
    assert last >= first + 0.5, (first, last, [round(r["reward"], 3) for r in rows])
    evals = [r for r in metrics(out) if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 8, 16]
    assert evals[-1]["eval_reward"] >= evals[0]["eval_reward"] + 1.0, evals


class RewardServer:
    """``repulse serve-rm`` on 127.0.0.1 and an OS-chosen free port (``--port 0``; the port is read
    from the server's start-up line, so no other process can take it in between)."""

    def __init__(self, rm: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "repulse", "serve-rm", "--reward.model_name_or_path", str(rm)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--batch_size", "7"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        found = threading.Event()
        self.url = ""

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                m = re.search(r"reward server on (http://\S+/get_reward)", line)
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + 120
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise AssertionError("the reward server did not start:\n" + "".join(self.lines)[-3000:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.mark.slow
def test_reward_server_scores_equal_the_in_process_model_and_rl_trains_on_them(toy, toy_rm, tmp_path):
    """RL with ``--reward.remote_url http://127.0.0.1:PORT/get_reward`` (``repulse serve-rm``,
    scoring in micro-batches of 7, so padding differs from the in-process scorer): every sample's
    reward (all written out by ``--repulse.save_negdata`` with an infinite threshold) equals the
    in-process reward model's score of the same text within 1e-5 (fp32; only padding and batch
    shapes differ), and the same seed with the reward model in process logs the same per-step
    rewards within 1e-5 (the rollouts are identical: both runs see the same rewards)."""
    from repulse.rl.rewards import RewardInput, RewardModelSource

    server = RewardServer(toy_rm)
    try:
        dump = tmp_path / "samples.jsonl"
        over = dict(train__max_steps=3, repulse__save_negdata=str(dump), repulse__negdata_threshold=1e9)
        remote = rm_cfg(toy, toy_rm, tmp_path / "remote", algo__advantage__estimator="rloo", **over)
        remote.reward.model_name_or_path, remote.reward.remote_url = None, server.url
        rows_remote = run_rl(remote)
    finally:
        server.close()
    assert [r["step"] for r in rows_remote] == [1, 2, 3]
    samples = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(samples) >= 3 * 32 // 2  # deduplicated (prompt, response) pairs of 96 samples
    local = RewardModelSource(
        str(toy_rm), torch.device("cpu"), max_len=2048, input_format="auto", chosen_label=None,
        offload=False, micro_batch_size=32,
    )  # fmt: skip
    prompts, responses = [s["prompt"] for s in samples], [s["response"] for s in samples]
    batch = RewardInput(
        [p + r for p, r in zip(prompts, responses)], prompts, responses, [None] * len(samples)
    )
    expected = local(batch)
    got = torch.tensor([s["reward"] for s in samples])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(expected.std()) > 0.1  # not a degenerate constant score

    in_process = run_rl(
        rm_cfg(toy, toy_rm, tmp_path / "local", algo__advantage__estimator="rloo", train__max_steps=3)
    )
    for a, b in zip(rows_remote, in_process):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5), (a["step"], a["reward"], b["reward"])


@pytest.mark.slow
def test_reward_server_down_is_a_clear_error(toy, tmp_path):
    """Nothing listens on the port: one ``error:`` paragraph naming the URL, no traceback."""
    url = f"http://127.0.0.1:{free_port()}/get_reward"
    cfg = rl_cfg(toy, tmp_path / "out", reward__remote_url=url, reward__retries=2, train__max_steps=1)
    proc = cli(["rl", "--config", cfg_file(cfg, tmp_path / "rl.yaml")], cwd=tmp_path)
    assert_clean_error(proc, url, "did not answer")


# --------------------------------------------------------------------------- 5. two processes


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("engine", ["fsdp", "deepspeed"])
def test_two_processes_reproduce_one(toy, tmp_path, engine):
    """``torchrun --nproc-per-node 2`` (fsdp or deepspeed, ZeRO-3 sharding, gloo) vs one local process, same
    seed. Sampled rollouts cannot match across world sizes (each rank draws for its own share of
    the prompts), so rollouts are greedy (temperature 0): then each prompt's response is a
    function of the weights alone. PPO with a critic (gae; advantages whitened over both ranks'
    tokens), a KL-in-reward reference with an adaptive controller and running reward
    normalisation (both must see every rank's samples, not their own), one optimizer step per
    rollout, lr 1e-3, 3 steps:
    per-step reward, reward std (over all samples, not a mean of per-rank stds), KL, losses and
    gradient norms of actor and critic agree within a relative 1e-4, and actor and critic made the
    same update (fp32; only reduction order and padding widths differ; ``same_update``)."""
    over = dict(
        algo__advantage__estimator="gae",
        algo__kl__init_coef=0.05,
        algo__kl__target=0.01,
        algo__kl__horizon=10,
        reward__normalize_enable=True,
        rollout__n_samples_per_prompt=1,
        rollout__temperature=0.0,
        train__batch_size=8,
        train__micro_batch_size=4,
        train__max_steps=3,
        actor__adam__lr=1e-3,
        critic__adam__lr=1e-3,
        critic__save_value_network=True,
    )
    if engine == "deepspeed":
        needs_deepspeed()
    one = run_rl(rl_cfg(toy, tmp_path / "one", **over))
    two_cfg = rl_cfg(toy, tmp_path / "two", engine__backend=engine, engine__zero_stage=3, **over)
    two_cfg.engine.param_dtype = "fp32"
    torchrun(["rl", "--config", cfg_file(two_cfg, tmp_path / "two.yaml")], cwd=tmp_path)
    two = steps(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    assert one[0]["reward_std"] > 0.01  # greedy answers differ between prompts: a real signal
    assert one[-1]["kl"] != 0.0
    assert one[-1]["kl_coef"] != one[0]["kl_coef"]  # the controller moved
    keys = (
        "reward",
        "reward_std",
        "kl",
        "kl_coef",
        "shaped_reward",
        "response_length",
        "policy_loss",
        "value_loss",
    )
    for a, b in zip(one, two):
        for key in (*keys, "actor_grad_norm", "critic_grad_norm"):
            assert b[key] == approx(a[key]), (key, a["step"], a[key], b[key])
    for sub in ("", "critic"):
        assert_same_update(toy.llama, tmp_path / "one" / sub, tmp_path / "two" / sub)


# --------------------------------------------------------------------------- 6. SIGKILL and resume


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(toy, tmp_path):
    """``repulse rl`` (PPO with a critic, KL in the reward with an adaptive controller, running
    reward normalisation: every piece of state a resume must restore) with a checkpoint after
    every step, SIGKILLed once step_3 is on disk, then resumed with ``--ckpt.load_enable``: the
    final actor (and critic) weights equal an uninterrupted run's bit for bit, per-step rewards
    are identical, and metrics.jsonl holds steps 1..12 once each."""
    over = dict(
        algo__advantage__estimator="gae",
        algo__kl__init_coef=0.05,
        algo__kl__target=0.1,
        algo__kl__horizon=100,
        reward__normalize_enable=True,
        critic__save_value_network=True,
        train__max_steps=12,
        ckpt__save_steps=1,
        ckpt__max_num=2,
    )
    full_yaml = cfg_file(rl_cfg(toy, tmp_path / "full", **over), tmp_path / "full.yaml")
    part_yaml = cfg_file(rl_cfg(toy, tmp_path / "part", **over), tmp_path / "part.yaml")
    full = cli(["rl", "--config", full_yaml], cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "repulse", "rl", "--config", part_yaml],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )  # fmt: skip
    ckpts = tmp_path / "part" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (ckpts / "step_3" / "trainer.json").exists():
        time.sleep(0.02)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert still_running, "the run ended before it could be killed"
    assert list(ckpts.glob("step_*/trainer.json")), "no finished checkpoint"
    assert not (tmp_path / "part" / "model.safetensors").exists()  # killed before the end

    resumed = cli(["rl", "--config", part_yaml, "--ckpt.load_enable"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a, b = steps(tmp_path / "full"), steps(tmp_path / "part")
    assert [r["step"] for r in metrics(tmp_path / "part")] == list(range(1, 13))  # none repeated or missing
    assert [r["reward"] for r in b] == [r["reward"] for r in a]
    assert [r["kl_coef"] for r in b] == [r["kl_coef"] for r in a]
    for sub in ("", "critic"):
        wa, wb = load_weights(tmp_path / "full" / sub), load_weights(tmp_path / "part" / sub)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (sub, k)


# --------------------------------------------------------------------------- 7. bad input


@pytest.mark.slow
def test_bad_input_gives_one_paragraph_errors(toy, tmp_path):
    base = ["rl", "--actor.model_name_or_path", str(toy.llama), "--reward.remote_url", str(REWARD_FILE),
            "--rollout.max_new_tokens", "4", "--train.max_steps", "1", "--logger.progress_bar", "false",
            "--ckpt.output_dir", str(tmp_path / "out")]  # fmt: skip
    group = cli([*base, "--data.prompt_dataset", str(toy.prompts), "--algo.advantage.estimator", "group_norm",
                 "--rollout.n_samples_per_prompt", "1"])  # fmt: skip
    assert_clean_error(group, "group_norm", "--rollout.n_samples_per_prompt", "2 or more")
    rows = [json.loads(line) for line in toy.prompts.read_text().splitlines()[:8]]
    no_key = tmp_path / "no_key.jsonl"
    no_key.write_text("".join(json.dumps({"question": r["input"]}) + "\n" for r in rows))
    assert_clean_error(cli([*base, "--data.prompt_dataset", str(no_key)]), "'input'", "--data.input_key")


@pytest.mark.slow
def test_rl_recipes_run(toy, tmp_path, monkeypatch):
    """Every ``recipes/rl`` recipe as written, after ``toy_assets/rm`` is made the documented way
    (``repulse rm --config recipes/rm/preference_mixture.yaml --ckpt.output_dir toy_assets/rm``);
    2 steps each with finite rewards."""
    from repulse import cli as repulse_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    assets = tmp_path / "toy_assets"
    assets.mkdir()
    for item in toy.root.iterdir():
        (assets / item.name).symlink_to(item, target_is_directory=item.is_dir())
    (tmp_path / "recipes").symlink_to(recipes, target_is_directory=True)  # reward_func.py is relative
    monkeypatch.chdir(tmp_path)
    rm_args = ["rm", "--config", str(recipes / "rm" / "preference_mixture.yaml"), "--ckpt.output_dir"]
    assert repulse_cli.main([*rm_args, "toy_assets/rm", "--logger.progress_bar", "false"]) == 0
    for recipe in sorted((recipes / "rl").glob("*.yaml")):
        out = tmp_path / "runs" / recipe.stem
        argv = ["rl", "--config", str(recipe), "--ckpt.output_dir", str(out), "--train.max_steps", "2"]
        assert repulse_cli.main([*argv, "--logger.progress_bar", "false"]) == 0, recipe.name
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        rewards = [r["reward"] for r in rows if "reward" in r]
        assert len(rewards) == 2 and all(math.isfinite(x) for x in rewards), (recipe.name, rows)
