"""``repulse rl --rollout.backend vllm`` end to end on the toy, as users run it (the CLI in a fresh
process: one ``vllm.LLM`` per sampling role in every process).

GRPO on one process raises the toy's ``e``-fraction reward by the margin the hf backend reaches
on the same seed and steps (``tests/trainers/test_rl.py``'s setup: 8 prompts x 4 samples x 8
tokens, lr 1e-2, 16 steps; margin = mean reward of the last 4 steps - of the first 4). Measured
margins, hf / vllm: seed 1: 0.386 / 0.377, seed 2: 0.373 / 0.382, seed 3: 0.282 / 0.380,
seed 42: 0.872 / 0.700 (both reach the 1.0 plateau there, vLLM two steps later): the backends
differ by no more than hf differs from itself across seeds. The test runs seed 1 and asks for
both margins >= 0.06 (the estimator test's bar) and a difference <= 0.1; an engine that never
gets the new weights stays at the initial reward (margin ~0). GRPO on two processes and
RePULSe on one and two run a few steps; where the update reads the old log-probs, the
trainer's forward equals the engine's per-token density (``rollout_logprob_diff`` ~2e-7), which
holds only if the engine got the weights after every update.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from test_rl import first_last, rl_cfg, steps
from test_rm import cfg_file, cli, torchrun

from repulse.config.sections import RLConfig
from repulse.rl.rollout.vllm import vllm_installed

if not vllm_installed():
    pytest.skip("needs vLLM (make test-vllm runs these in .venv-vllm)", allow_module_level=True)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def run_cli(cfg, tmp_path: Path, name: str, nproc: int = 1) -> list[dict]:
    cfg.vllm.enforce_eager = True  # no torch.compile of the toy at start-up
    recipe = cfg_file(cfg, tmp_path / f"{name}.yaml")
    if nproc == 1:
        proc = cli(["rl", "--config", recipe], timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    else:
        torchrun(["rl", "--config", recipe], cwd=tmp_path, timeout=600)
    return steps(Path(cfg.ckpt.output_dir))


def test_grpo_raises_the_reward_by_the_hf_backends_margin(toy, tmp_path):
    margins = {}
    for backend in ("hf", "vllm"):
        cfg = rl_cfg(toy, tmp_path / backend, algo__advantage__estimator="group_norm")
        cfg.rollout.backend, cfg.train.seed = backend, 1
        rows = run_cli(cfg, tmp_path, backend)
        assert [r["step"] for r in rows] == list(range(1, 17))
        assert all(math.isfinite(r["policy_loss"]) for r in rows)
        first, last = first_last(rows)
        margins[backend] = last - first
    print(f"GRPO reward rise over 16 steps (last 4 - first 4 steps): {margins}")
    # both learn (the estimator test's bar), and by the same margin within the spread of hf seeds
    assert margins["hf"] >= 0.06 and margins["vllm"] >= 0.06, margins
    assert abs(margins["vllm"] - margins["hf"]) <= 0.1, margins


@pytest.mark.distributed
def test_grpo_on_two_processes_keeps_the_engines_in_sync(toy, tmp_path):
    # two optimizer steps per rollout: the update reads the old log-probs, so the engine's
    # densities are compared with the trainer's forward every step
    cfg = rl_cfg(toy, tmp_path / "grpo2", algo__advantage__estimator="group_norm")
    cfg.rollout.backend = "vllm"
    cfg.train.batch_size = cfg.train.micro_batch_size = 8
    cfg.train.max_steps = 3
    rows = run_cli(cfg, tmp_path, "grpo2", nproc=2)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["rollout_logprob_diff"] < 1e-4 for r in rows), [r["rollout_logprob_diff"] for r in rows]
    assert all(math.isfinite(r["policy_loss"]) for r in rows)


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_repulse_runs(toy, tmp_path, nproc):
    cfg = rl_cfg(toy, tmp_path / f"repulse{nproc}", repulse__method="repulse")
    cfg.rollout.backend = "vllm"
    cfg.critic = RLConfig().critic  # RePULSe has no critic: its fields stay at their defaults
    cfg.repulse.bad_threshold = 0.05  # the toy reward is in [0, 1]: a few samples are "bad"
    cfg.train.micro_batch_size = 16  # whole prompt groups per process
    cfg.train.batch_size = RLConfig().train.batch_size  # read by the PPO family only
    cfg.train.max_steps = 2
    rows = run_cli(cfg, tmp_path, f"repulse{nproc}", nproc=nproc)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "q_reward", "loss_ctl"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert (Path(cfg.ckpt.output_dir) / "proposal" / "config.json").is_file()


def test_a_resumed_run_draws_what_the_uninterrupted_run_draws(toy, tmp_path):
    """The engine's base seeds come from a random stream of its own, which the checkpoint keeps
    beside the policy: resumed from step_2, steps 3-4 sample, score and update exactly as the
    uninterrupted run's steps 3-4 (a stream restarted at its seed would redraw step 1's noise)."""
    cfg = rl_cfg(toy, tmp_path / "full", algo__advantage__estimator="group_norm", train__max_steps=4)
    cfg.rollout.backend, cfg.ckpt.save_steps, cfg.ckpt.max_num = "vllm", 1, 4
    full = run_cli(cfg, tmp_path, "full")
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    shutil.rmtree(part / "checkpoints" / "step_3")  # the last finished checkpoint is now step_2
    assert (part / "checkpoints" / "step_2" / "actor" / "sampler_rank0.pt").is_file()
    cfg.ckpt.output_dir, cfg.ckpt.load_enable = str(part), True
    resumed = run_cli(cfg, tmp_path, "part")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full[2:], resumed[2:]):
        for key in ("reward", "policy_loss", "response_length"):
            assert a[key] == b[key], (key, a["step"], a[key], b[key])
