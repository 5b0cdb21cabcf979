"""Placement and vLLM flags of the seed commands are accepted and warn by name until their
feature lands (``repulse.config.usage.NOT_YET``); at their default they say nothing."""

from __future__ import annotations

import pytest

import repulse.errors
from repulse.config import parse_config
from repulse.config.schema import leaves
from repulse.config.sections import RLConfig
from repulse.config.usage import NOT_YET


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(repulse.errors, "_warned", set())


SEED = [
    (["--actor_num_nodes", "2"], "--actor.num_nodes 2"),
    (["--actor_num_gpus_per_node", "8"], "--actor.num_gpus_per_node 8"),
    (["--critic_num_nodes", "2"], "--critic.num_nodes 2"),
    (["--critic_num_gpus_per_node", "4"], "--critic.num_gpus_per_node 4"),
    (["--ref_num_nodes", "2"], "--ref.num_nodes 2"),
    (["--ref_num_gpus_per_node", "4"], "--ref.num_gpus_per_node 4"),
    (["--reward_num_nodes", "2"], "--reward.num_nodes 2"),
    (["--reward_num_gpus_per_node", "4"], "--reward.num_gpus_per_node 4"),
    (["--vllm_num_engines", "4"], "--vllm.num_engines 4"),
    (["--vllm_tensor_parallel_size", "2"], "--vllm.tensor_parallel_size 2"),
    (["--vllm_gpu_memory_utilization", "0.5"], "--vllm.gpu_memory_utilization 0.5"),
    (["--enable_prefix_caching"], "--vllm.enable_prefix_caching True"),
    (["--enforce_eager"], "--vllm.enforce_eager True"),
    (["--vllm_enable_sleep"], "--vllm.enable_sleep True"),
    (["--vllm_sync_backend", "gloo"], "--vllm.sync_backend 'gloo'"),
    (["--vllm_sync_with_ray"], "--vllm.sync_with_ray True"),
    (["--vllm_generate_batch_size", "16"], "--rollout.vllm_generate_batch_size 16"),
    (["--rollout.backend", "vllm"], "--rollout.backend 'vllm'"),
]


@pytest.mark.parametrize("argv, said", SEED, ids=lambda x: x[0] if isinstance(x, list) else None)
def test_each_pending_flag_warns_once_by_name(argv, said, capsys):
    for _ in range(2):
        parse_config("rl", RLConfig, ["--pretrain", "m", *argv])
    err = capsys.readouterr().err
    assert err.count(f"{said} has no effect in this version") == 1, err


def test_at_their_defaults_they_say_nothing(capsys):
    argv = [
        "--pretrain",
        "m",
        "--actor_num_nodes",
        "1",
        "--vllm_sync_backend",
        "nccl",
        "--rollout.backend",
        "hf",
    ]
    parse_config("rl", RLConfig, argv)
    assert "has no effect" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag", ["--colocate_all_models", "--colocate_actor_ref", "--async_train", "--deepspeed_enable_sleep"]
)
def test_launcher_flags_without_a_field_are_named_in_the_ignore_note(flag, capsys):
    parse_config("rl", RLConfig, ["--pretrain", "m", flag])
    err = capsys.readouterr().err
    (note,) = [line for line in err.splitlines() if "ignored 1 seed flag(s)" in line]
    assert flag in note and "in this version yet" in note


def test_every_pending_entry_is_a_field():
    fields = set(leaves(RLConfig))
    for path in NOT_YET:
        assert path in fields or any(f.startswith(path) for f in fields), path


def test_save_hf_warns_in_rl_and_is_refused_where_nothing_checkpoints(capsys):
    from repulse.config.sections import EvalTailConfig
    from repulse.errors import UserError

    parse_config("rl", RLConfig, ["--pretrain", "m", "--save_hf_ckpt"])
    assert "--ckpt.save_hf True has no effect in this version yet: repulse rl" in capsys.readouterr().err
    with pytest.raises(UserError, match="--ckpt.save_hf True is not read by repulse eval-tail.*repulse sft"):
        parse_config("eval-tail", EvalTailConfig, ["--ckpt.save_hf"])
