"""A seed ``train_ppo_ray`` command, translated, submitted with ``ray job submit`` to a running
cluster (two CPU nodes), runs to completion with the placement it asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ray_helpers import ROOT, by_role, env, placement
from seed_commands import SEED_COMMANDS
from test_legacy import shell_split

from repulse.config.legacy import split_launcher

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_seed_ppo_ray_command_runs_under_ray_job_submit(toy, toy_rm, two_nodes, tmp_path):
    """OpenRLHF's 'PPO with Ray' command (options_ppo_ray: actor, reference, critic, reward model
    and vLLM engines on a cluster, --colocate_actor_ref, --colocate_critic_reward) after
    ``split_launcher``: ``openrlhf.cli.train_ppo_ray`` becomes ``repulse rl --launch.backend ray``.
    The Hub names become the toy's; sizes shrink by flags appended in our names (one device per
    role, one hf engine without tensor parallelism, 2 steps of 4 prompts). Submitted with
    ``ray job submit --working-dir <repository>``: the job succeeds, the policy is saved, and the
    placement shows the colocations (reference with policy, reward model with critic)."""
    seed = next(s for s in SEED_COMMANDS if s.name == "options_ppo_ray")
    command, argv = split_launcher(shell_split(seed.text))
    assert command == "rl" and argv[:2] == ["--launch.backend", "ray"]
    out = tmp_path / "ppo"
    swap = {"--pretrain": str(toy.llama), "--reward_pretrain": str(toy_rm), "--prompt_data": str(toy.prompts),
            "--save_path": str(out), "--input_key": "input"}  # fmt: skip
    argv = [swap[argv[i - 1]] if i and argv[i - 1] in swap else a for i, a in enumerate(argv)]
    i = argv.index("--use_wandb")  # an account key, like the Hub names
    del argv[i : i + 2]
    shrink = [
        "--actor.num_gpus_per_node", "1", "--ref.num_gpus_per_node", "1", "--critic.num_gpus_per_node", "1",
        "--reward.num_gpus_per_node", "1", "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "1",
        "--rollout.batch_size", "4", "--rollout.micro_batch_size", "4", "--train.batch_size", "4",
        "--train.micro_batch_size", "4", "--rollout.max_new_tokens", "4", "--data.max_len", "96",
        "--train.max_steps", "2", "--engine.param_dtype", "fp32", "--engine.backend", "local",
        "--launch.cpus_per_device", "0.5", "--logger.progress_bar", "false",
    ]  # fmt: skip
    assert two_nodes.dashboard, "the job server needs ray[default] (the ray extra) in this venv"
    job = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", two_nodes.dashboard,
           "--working-dir", str(ROOT), "--", sys.executable, "-m", "repulse", "rl", *argv, *shrink]  # fmt: skip
    proc = subprocess.run(job, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0 and "succeeded" in log, log
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]
    assert all("value_loss" in r for r in rows if "reward" in r)  # PPO with the critic from the RM
    roles = by_role(placement(out))
    assert sorted(roles) == ["critic", "policy", "ref", "reward", "rollout"]
    # the job joined the cluster it was submitted to ($RAY_ADDRESS), not a local one of its own
    assert {r["node_id"] for rows in roles.values() for r in rows} <= set(two_nodes.node_ids)
    assert roles["ref"][0]["pool"] == roles["policy"][0]["pool"] == "policy"
    assert roles["reward"][0]["pool"] == roles["critic"][0]["pool"] == "critic"
    assert roles["ref"][0]["bundle"] == roles["policy"][0]["bundle"]
    assert roles["rollout"][0]["pool"] == "rollout"
