"""Placement plans, bundle order and batch sharding without a cluster: the pure parts of
``repulse.launch`` and the flags that select and shape a Ray run."""

from __future__ import annotations

import pytest
import torch

from repulse.config import parse_config
from repulse.config.legacy import split_launcher
from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.launch.placement import check_fits, local_ranks, order_by_node, plan
from repulse.launch.shards import merge_samples, split_even, split_sizes, trim_prompt_padding
from repulse.rl.experience import Experience
from repulse.rl.rollout import Samples
from repulse.trainers.rl import validate

BASE = [
    "--actor.model_name_or_path", "m", "--data.prompt_dataset", "p.jsonl", "--reward.remote_url", "r.py",
    "--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "2", "--algo.kl.init_coef", "0",
]  # fmt: skip


def cfg_of(*flags: str) -> RLConfig:
    base = BASE
    if "--repulse.method" in flags:  # the RePULSe methods refuse the PPO family's estimator flag
        i = base.index("--algo.advantage.estimator")
        base = base[:i] + base[i + 2 :]
    return parse_config("rl", RLConfig, [*base, "--launch.backend", "ray", *flags], validate)


# --------------------------------------------------------------------------- plans


def test_disaggregated_plan_gives_every_role_a_pool_of_its_shape():
    cfg = cfg_of(
        "--actor.num_nodes", "2", "--actor.num_gpus_per_node", "2", "--ref.num_gpus_per_node", "3",
        "--algo.kl.init_coef", "0.1", "--vllm.num_engines", "2", "--reward.model_name_or_path", "rm",
        "--reward.num_nodes", "1",
    )  # fmt: skip
    pools, groups = plan(cfg, {"ref"})
    assert {g.kind: (g.pool, g.size) for g in groups} == {
        "policy": ("policy", 4), "ref": ("ref", 3), "reward": ("reward", 1), "rollout": ("rollout", 2),
    }  # fmt: skip
    assert (pools["policy"].nodes, pools["policy"].per_node) == (2, 2)
    assert [g.kind for g in groups if g.world] == ["policy", "rollout"]  # frozen roles are replicas
    assert [g.kind for g in groups if g.samples] == ["rollout"]  # the engines sample, not the policy


def test_colocation_flags_share_pools():
    cfg = cfg_of(
        "--actor.num_gpus_per_node", "2", "--ref.num_gpus_per_node", "2", "--critic.num_gpus_per_node", "2",
        "--reward.num_gpus_per_node", "2", "--algo.kl.init_coef", "0.1", "--reward.model_name_or_path", "rm",
        "--launch.colocate_actor_ref", "--launch.colocate_critic_reward",
    )  # fmt: skip
    pools, groups = plan(cfg, {"ref", "critic"})
    assert {g.kind: g.pool for g in groups} == {
        "policy": "policy",
        "ref": "policy",
        "critic": "critic",
        "reward": "critic",
    }
    assert pools["policy"].groups == ["policy", "ref"] and pools["critic"].groups == ["critic", "reward"]
    assert [g.kind for g in groups if g.samples] == ["policy"]  # no engines: the policy's actors sample


def test_hybrid_engine_puts_everything_on_the_policys_bundles():
    cfg = cfg_of(
        "--actor.num_gpus_per_node", "2", "--vllm.num_engines", "2", "--launch.colocate_all_models",
        "--repulse.method", "repulse", "--rollout.n_samples_per_prompt", "4",
    )  # fmt: skip
    pools, groups = plan(cfg, {"proposal"})
    assert list(pools) == ["policy"] and pools["policy"].groups == ["policy", "proposal", "rollout"]


def test_colocated_shapes_must_match_and_engines_must_fit():
    with pytest.raises(UserError, match="colocate_actor_ref needs the reference's"):
        cfg_of("--actor.num_gpus_per_node", "2", "--algo.kl.init_coef", "0.1", "--launch.colocate_actor_ref")
    with pytest.raises(UserError, match="engines do not fit the policy's 1 devices"):
        cfg_of("--vllm.num_engines", "2", "--launch.colocate_all_models")
    with pytest.raises(UserError, match="critic trains on the same data-parallel shards"):
        cfg_of("--algo.advantage.estimator", "gae", "--critic.num_gpus_per_node", "2")
    cfg_of("--algo.advantage.estimator", "gae", "--critic.num_gpus_per_node", "2", "--actor.num_nodes", "2")
    with pytest.raises(UserError, match="hf rollout engines hold a whole model"):
        cfg_of("--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "2")


def test_a_vllm_engine_of_tensor_parallel_size_t_is_t_actors():
    """vLLM engines on Ray: ``num_engines x tp`` actors in the engines' pool (consecutive ranks form one
    engine); without engines of their own, the policy's actors must split into engines of t."""
    from repulse.trainers.rl.cli import validate_launch

    cfg = cfg_of("--actor.num_gpus_per_node", "2", "--vllm.num_engines", "3")
    cfg.rollout.backend, cfg.vllm.tensor_parallel_size = "vllm", 2  # (vLLM is not installed here)
    validate_launch(cfg)
    pools, groups = plan(cfg, set())
    assert pools["rollout"].bundles == 6 and [g.size for g in groups if g.kind == "rollout"] == [6]
    cfg.rollout.backend = "hf"
    assert plan(cfg, set())[0]["rollout"].bundles == 3
    cfg = cfg_of("--actor.num_gpus_per_node", "3")
    cfg.rollout.backend, cfg.vllm.tensor_parallel_size = "vllm", 2
    with pytest.raises(UserError, match="2 must divide --actor.num_nodes x --actor.num_gpus_per_node"):
        validate_launch(cfg)
    cfg.actor.num_gpus_per_node = 4
    validate_launch(cfg)


def test_bundles_are_ordered_by_node_and_local_ranks_count_within_a_node():
    # Ray placed bundles 0 and 2 on node a, 1 and 3 on node b
    nodes = {0: "a", 1: "b", 2: "a", 3: "b"}
    ordered = order_by_node(nodes)
    assert ordered == [0, 2, 1, 3]
    assert local_ranks(ordered, nodes) == [0, 1, 0, 1]


def test_a_plan_larger_than_the_cluster_is_refused_naming_the_shortage():
    cfg = cfg_of("--actor.num_gpus_per_node", "3", "--vllm.num_engines", "2")
    pools, _ = plan(cfg, set())
    check_fits(pools, {"CPU": 1.0}, {"CPU": 5.0})  # 3 + 2 bundles fit exactly
    with pytest.raises(UserError, match=r"CPU: 4 of 5 needed"):
        check_fits(pools, {"CPU": 1.0}, {"CPU": 4.0})


# --------------------------------------------------------------------------- flags


def test_train_ppo_ray_selects_the_ray_backend_and_colocate_flags_translate(capsys):
    command, argv = split_launcher(
        "ray job submit --address=http://127.0.0.1:8265 -- python3 -m openrlhf.cli.train_ppo_ray "
        "--colocate_actor_ref --async_train --async_queue_size 2".split()
    )
    assert command == "rl" and argv[:2] == ["--launch.backend", "ray"]
    cfg = parse_config("rl", RLConfig, [*BASE, *argv])
    assert cfg.launch.backend == "ray" and cfg.launch.colocate_actor_ref
    assert cfg.train.async_enable and cfg.train.async_queue_size == 2
    assert split_launcher(["deepspeed", "--module", "openrlhf.cli.train_ppo", "--x"])[1] == ["--x"]


def test_placement_flags_warn_by_name_without_ray(capsys, monkeypatch):
    import repulse.errors

    monkeypatch.setattr(repulse.errors, "_warned", set())
    parse_config("rl", RLConfig, [*BASE, "--actor.num_nodes", "2", "--launch.colocate_all_models"], validate)
    err = capsys.readouterr().err
    assert "--actor.num_nodes 2 has no effect without --launch.backend ray" in err
    assert "--launch.colocate_all_models True has no effect without --launch.backend ray" in err
    parse_config("rl", RLConfig, [*BASE, "--actor.num_nodes", "2", "--launch.backend", "ray"], validate)
    assert "no effect" not in capsys.readouterr().err


def test_async_needs_ray_engines_and_the_ppo_family():
    with pytest.raises(UserError, match="needs rollout engines that hold weights of their own"):
        parse_config("rl", RLConfig, [*BASE, "--train.async_enable"], validate)
    with pytest.raises(UserError, match="needs rollout engines that hold weights of their own"):
        parse_config("rl", RLConfig, [*BASE, "--train.async_enable", "--vllm.num_engines", "1"], validate)
    with pytest.raises(UserError, match="needs rollout engines that hold weights of their own"):
        cfg_of("--train.async_enable")
    with pytest.raises(UserError, match="asynchronous training is for the PPO family"):
        cfg_of("--train.async_enable", "--vllm.num_engines", "1", "--repulse.method", "reinforce",
               "--rollout.n_samples_per_prompt", "2")  # fmt: skip
    with pytest.raises(UserError, match="nothing to overlap"):
        cfg_of("--train.async_enable", "--vllm.num_engines", "1", "--launch.colocate_all_models")
    cfg = cfg_of("--train.async_enable", "--vllm.num_engines", "1", "--train.async_queue_size", "2")
    assert cfg.train.async_queue_size == 2


# --------------------------------------------------------------------------- shards


def samples(prompts: list[list[int]], responses: list[list[int]], pad: int = 0) -> Samples:
    """Rows as a sampler returns them: prompts left-padded, responses right-padded."""
    p = max(len(x) for x in prompts)
    t = max(len(x) for x in responses)
    rows = len(prompts)
    seq = torch.full((rows, p + t), pad)
    attn = torch.zeros((rows, p + t), dtype=torch.long)
    act = torch.zeros((rows, t), dtype=torch.long)
    for i, (x, y) in enumerate(zip(prompts, responses)):
        seq[i, p - len(x) : p] = torch.tensor(x)
        seq[i, p : p + len(y)] = torch.tensor(y)
        attn[i, p - len(x) : p + len(y)] = 1
        act[i, : len(y)] = 1
    lp = -act.float() * torch.arange(1, rows + 1)[:, None]
    return Samples(seq, attn, act, p, torch.arange(rows), torch.zeros(rows, dtype=torch.bool), lp,
                   torch.full((rows,), 3))  # fmt: skip


def test_merged_shards_pad_to_the_widest_and_trimming_restores_each_shard():
    a = samples([[5, 6, 7], [8]], [[1, 2], [3]])  # prompt width 3, response width 2
    b = samples([[9, 9]], [[4, 4, 4, 4]])  # prompt width 2, response width 4
    m = merge_samples([a, b], [2, 1], pad_id=0)
    assert m.prompt_len == 3 and m.sequences.shape == (3, 7)
    assert m.prompt_index.tolist() == [0, 1, 2]  # b's prompt 0 is the step's prompt 2
    assert m.sequences[2].tolist() == [0, 9, 9, 4, 4, 4, 4]
    assert m.sequences[0].tolist() == [5, 6, 7, 1, 2, 0, 0]
    assert m.logprobs[2].tolist() == [-1.0, -1.0, -1.0, -1.0] and m.logprobs[0, 2:].tolist() == [0.0, 0.0]
    assert m.versions.tolist() == [3, 3, 3]
    back = trim_prompt_padding(m.select([2]))  # b's row comes back to b's prompt width
    assert back.prompt_len == 2 and back.sequences[0, :2].tolist() == [9, 9]
    # micro-batches of one shard are trimmed by what all of them have in common
    exps = [Experience(m.select([1]), None), Experience(m.select([2]), None)]
    trimmed = trim_prompt_padding(exps)
    assert [e.samples.prompt_len for e in trimmed] == [2, 2]
    assert trimmed[0].samples.sequences[0].tolist() == [0, 8, 3, 0, 0, 0]


def test_split_sizes():
    assert split_sizes(5, 2) == [3, 2] and split_sizes(1, 3) == [1, 0, 0]
    assert split_even(6, 3, "x") == [2, 2, 2]
    with pytest.raises(RuntimeError, match="7 rows cannot be split evenly over 2"):
        split_even(7, 2, "x")


def test_an_unanswered_cluster_address_is_a_clear_error_not_a_wait():
    """Ray retries a dead head for minutes; the address is checked first (here: a closed port)."""
    import socket
    import time

    pytest.importorskip("ray")
    from repulse.config.sections import LaunchSection
    from repulse.launch.cluster import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    started = time.monotonic()
    with pytest.raises(
        UserError, match=rf"no Ray cluster answers at 127.0.0.1:{port} \(--launch.ray_address\)"
    ):
        connect(LaunchSection(backend="ray", ray_address=f"127.0.0.1:{port}"))
    assert time.monotonic() - started < 5
