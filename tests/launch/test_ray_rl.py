"""``repulse rl --launch.backend ray`` on a real two-node Ray cluster (CPU "nodes"), on the toy.

The Ray controller holds each step whole and its actor groups hold the step's shards, shard r on
rank r - the rows ``torchrun`` rank r holds - and every actor that samples seeds itself as rank r
does. So at the same world size a Ray run and a ``torchrun`` run draw the same samples and make
the same updates. Tolerance: relative 1e-6 (plus 1e-7 absolute for values near 0): the losses,
gradient norms, KL and clip statistics come out bit for bit equal; what differs in the last bits
are means over the whole step, which ``torchrun`` forms as the mean of the two ranks' means
(reward, reward std, a zero-mean shaped reward).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ray_helpers import by_role, placement, ray_rl
from test_rl import rl_cfg, steps
from test_rm import cfg_file, metrics, torchrun

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

RTOL, ATOL = 1e-6, 1e-7
SKIP = ("time", "samples_per_s", "step")


def assert_same_metrics(a: list[dict], b: list[dict]) -> int:
    """Every numeric metric of every step within the tolerance; returns how many were compared."""
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    compared = 0
    for x, y in zip(a, b):
        keys = {k for k in x if not k.startswith(SKIP) and isinstance(x[k], (int, float))}
        assert keys <= set(y), (sorted(keys - set(y)), x["step"])
        for k in sorted(keys):
            assert math.isclose(x[k], y[k], rel_tol=RTOL, abs_tol=ATOL), (k, x["step"], x[k], y[k])
            compared += 1
    return compared


def check_ok(proc) -> None:
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def grpo_cfg(toy, out: Path):
    """GRPO (group_norm), KL 0.01 in the reward (a reference), 8 prompts x 4 samples, two optimizer
    steps per rollout (train batch 16 of 32 rows: micro-batches per shard), 3 steps; the FSDP2
    engine (ZeRO-3 sharding over the group's world); a sampled evaluation on 8 held-out prompts
    before the first step and every 2 steps (each shard evaluates its share, drawing from its
    own random stream)."""
    return rl_cfg(
        toy, out, algo__advantage__estimator="group_norm", algo__kl__init_coef=0.01,
        rollout__micro_batch_size=16, train__batch_size=16, train__micro_batch_size=8, train__max_steps=3,
        engine__backend="fsdp", engine__zero_stage=3, engine__param_dtype="fp32",
        eval__dataset=str(toy.prompts), eval__max_samples=8, eval__steps=2,
    )  # fmt: skip


def test_grpo_on_ray_matches_torchrun_disaggregated_and_colocated(toy, two_nodes, tmp_path):
    """Disaggregated: the policy on 2 nodes x 1 device, the reference on its own 2 bundles, 2 rollout
    engines receiving the weights over gloo after every update. Colocated: policy and reference
    share 2 bundles (``--launch.colocate_actor_ref``) and the policy's actors sample themselves.
    Both equal ``torchrun --nproc-per-node 2`` within the tolerance, and the placement made is the
    one asked for."""
    yaml = cfg_file(grpo_cfg(toy, tmp_path / "torchrun"), tmp_path / "torchrun.yaml")
    torchrun(["rl", "--config", yaml], cwd=tmp_path, timeout=400)
    base = steps(tmp_path / "torchrun")
    assert base[0]["kl"] == 0.0 and base[-1]["kl"] > 0  # the reference is in play
    evals = [r for r in metrics(tmp_path / "torchrun") if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert base[0]["rollout_logprob_diff"] < 1e-5  # π_old is computed: two updates per rollout

    dis = tmp_path / "disaggregated"
    proc = ray_rl(
        ["--config", cfg_file(grpo_cfg(toy, dis), tmp_path / "dis.yaml"), "--actor.num_nodes", "2",
         "--ref.num_nodes", "2", "--vllm.num_engines", "2", "--vllm.sync_backend", "gloo",
         "--launch.cpus_per_device", "0.5"],
        two_nodes, tmp_path,
    )  # fmt: skip
    check_ok(proc)
    assert assert_same_metrics(base, steps(dis)) > 40
    assert_same_metrics(evals, [r for r in metrics(dis) if "eval_reward" in r])
    roles = by_role(placement(dis))
    assert sorted(roles) == ["policy", "ref", "rollout"]
    for role in ("policy", "ref"):  # 2 nodes x 1: one rank per node, each first on its node
        assert len({r["node_id"] for r in roles[role]}) == 2, roles[role]
        assert [r["local_rank"] for r in roles[role]] == [0, 0]
        assert {r["pool"] for r in roles[role]} == {role}
    engines = roles["rollout"]  # 1 x 2: packed on one node, local ranks 0 and 1
    assert len({r["node_id"] for r in engines}) == 1 and [r["local_rank"] for r in engines] == [0, 1]
    assert {r["pool"] for r in engines} == {"rollout"}
    assert sorted(r["bundle"] for r in engines) == [0, 1]
    assert {r["node_id"] for r in roles["policy"]} == set(two_nodes.node_ids)  # both nodes of the cluster

    col = tmp_path / "colocated"
    proc = ray_rl(
        ["--config", cfg_file(grpo_cfg(toy, col), tmp_path / "col.yaml"), "--actor.num_gpus_per_node", "2",
         "--ref.num_gpus_per_node", "2", "--launch.colocate_actor_ref", "--launch.cpus_per_device", "0.5"],
        two_nodes, tmp_path,
    )  # fmt: skip
    check_ok(proc)
    assert_same_metrics(base, steps(col))
    assert_same_metrics(evals, [r for r in metrics(col) if "eval_reward" in r])
    roles = by_role(placement(col))
    assert sorted(roles) == ["policy", "ref"]
    for p, r in zip(roles["policy"], roles["ref"]):  # rank r of both on bundle r of one pool
        assert (p["pool"], p["bundle"], p["node_id"]) == (r["pool"], r["bundle"], r["node_id"]) and p[
            "pool"
        ] == "policy"
    assert [p["local_rank"] for p in roles["policy"]] == [0, 1]


def repulse_cfg(toy, rm: Path, out: Path):
    """RePULSe (p, a proposal q, a reference for the KL, a reward model) on the toy: 8 prompts x 4
    samples scored by the toy RM, 3 steps."""
    from test_rl import TEMPLATE

    from repulse.config.sections import CriticSection

    cfg = rl_cfg(
        toy, out, reward__remote_url=None, reward__model_name_or_path=str(rm), algo__kl__init_coef=0.05,
        rollout__micro_batch_size=16, train__micro_batch_size=8, train__max_steps=3,
    )  # fmt: skip
    cfg.data.input_template = TEMPLATE
    cfg.critic = CriticSection()  # no critic: its fields (set by rl_cfg) are refused for RePULSe
    cfg.train.batch_size = type(cfg.train)().batch_size  # read by the PPO family only
    rp = cfg.repulse
    rp.method, rp.beta, rp.alpha, rp.proposal_lr, rp.bad_threshold = "repulse", 2.0, 0.1, 1e-2, -1.0
    rp.analytic_bad_word_calc = True  # the toy's exact P(bad) of p, before the first step and after the last
    return cfg


def test_repulse_on_ray_matches_torchrun_disaggregated_and_hybrid(toy, toy_rm, two_nodes, tmp_path):
    """RePULSe's four models on Ray. Disaggregated: p over both nodes, q on its own pool, the
    reference and the reward model as one replica each, 2 rollout engines that hold copies of p
    and of q and sample both (one random stream per engine, as one per torchrun rank). Hybrid
    engine (``--launch.colocate_all_models``): all of them on p's 2 bundles, the engines sleeping
    while the models train. Both equal ``torchrun --nproc-per-node 2`` within the tolerance."""
    yaml = cfg_file(repulse_cfg(toy, toy_rm, tmp_path / "torchrun"), tmp_path / "torchrun.yaml")
    torchrun(["rl", "--config", yaml], cwd=tmp_path, timeout=400)
    base = steps(tmp_path / "torchrun")
    assert all("loss_ctl" in r and "q_reward" in r for r in base)
    assert base[-1]["kl"] > 0
    exact = [r for r in metrics(tmp_path / "torchrun") if "p_bad_exact" in r]
    assert [r["step"] for r in exact] == [0, 3]

    layouts = {
        "disaggregated": ["--actor.num_nodes", "2", "--vllm.num_engines", "2"],
        "hybrid": [
            "--actor.num_gpus_per_node",
            "2",
            "--vllm.num_engines",
            "2",
            "--launch.colocate_all_models",
        ],
    }
    for name, flags in layouts.items():
        out = tmp_path / name
        yaml = cfg_file(repulse_cfg(toy, toy_rm, out), tmp_path / f"{name}.yaml")
        check_ok(ray_rl(["--config", yaml, *flags, "--launch.cpus_per_device", "0.5"], two_nodes, tmp_path))
        assert_same_metrics(base, steps(out))
        assert_same_metrics(exact, [r for r in metrics(out) if "p_bad_exact" in r])  # read on the controller
        assert (out / "proposal" / "config.json").is_file()
        roles = by_role(placement(out))
        assert sorted(roles) == ["policy", "proposal", "ref", "reward", "rollout"]
        assert [len(roles[k]) for k in ("policy", "proposal", "ref", "reward", "rollout")] == [2, 2, 1, 1, 2]
        pools = {k: {r["pool"] for r in rows} for k, rows in roles.items()}
        if name == "disaggregated":
            assert pools == {k: {k} for k in roles}
            assert len({r["node_id"] for r in roles["policy"]}) == 2
        else:
            assert pools == {k: {"policy"} for k in roles}
            for rows in roles.values():  # rank r of every role on bundle r of the policy's pool
                for r in rows:
                    p = roles["policy"][r["rank"]]
                    assert (r["bundle"], r["node_id"]) == (p["bundle"], p["node_id"])
