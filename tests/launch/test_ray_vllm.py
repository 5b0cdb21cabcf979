"""``repulse rl --launch.backend ray --rollout.backend vllm`` on a real two-node Ray cluster (CPU
"nodes"): vLLM engines in Ray actors, fully disaggregated (``--vllm.num_engines``, the weights
over a gloo group after every update) and colocated (the policy's actor samples with its own
engine, the weights passed by reference).

Both are compared with one process (``repulse rl --rollout.backend vllm``, same seed): an engine
draws its base seeds from one stream per engine and gets the same weights whichever way they
travel, so the metrics agree within ``test_ray_rl``'s tolerance. vLLM's samples differ from the hf
sampler's (other random streams), so an engine on Ray that silently fell back to hf would not
match. Runs in ``.venv-vllm`` (``make test-vllm``), which holds vLLM's CPU build and Ray.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray_helpers import by_role, placement, ray_rl
from test_ray_rl import assert_same_metrics, check_ok
from test_rl import rl_cfg, steps
from test_rm import cfg_file, cli, torchrun

from repulse.rl.rollout.vllm import vllm_installed

if not vllm_installed():
    pytest.skip("needs vLLM (make test-vllm runs these in .venv-vllm)", allow_module_level=True)

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]


def grpo_cfg(toy, out: Path, kl: float = 0.01):
    """GRPO with a KL penalty (a reference), 8 prompts x 4 samples, two optimizer steps per
    rollout (so the update reads the old log-probs, and rollout_logprob_diff compares the
    trainer's forward with the engine's density), 3 steps, vLLM without torch.compile."""
    cfg = rl_cfg(
        toy, out, algo__advantage__estimator="group_norm", algo__kl__init_coef=kl,
        train__batch_size=16, train__micro_batch_size=8, train__max_steps=3,
    )  # fmt: skip
    cfg.rollout.backend = "vllm"
    cfg.vllm.enforce_eager = True
    return cfg


def test_grpo_with_vllm_engines_on_ray_matches_one_process(toy, two_nodes, tmp_path):
    proc = cli(
        ["rl", "--config", cfg_file(grpo_cfg(toy, tmp_path / "one"), tmp_path / "one.yaml")], timeout=600
    )
    check_ok(proc)
    base = steps(tmp_path / "one")
    assert [r["step"] for r in base] == [1, 2, 3] and base[-1]["kl"] > 0
    # the engine got the weights after every update: its density is the trainer's forward
    assert all(r["rollout_logprob_diff"] < 1e-5 for r in base), [r["rollout_logprob_diff"] for r in base]

    layouts = {
        "disaggregated": ["--vllm.num_engines", "1", "--vllm.sync_backend", "gloo"],
        "colocated": ["--launch.colocate_actor_ref"],
    }
    for name, flags in layouts.items():
        out = tmp_path / name
        yaml = cfg_file(grpo_cfg(toy, out), tmp_path / f"{name}.yaml")
        check_ok(
            ray_rl(["--config", yaml, *flags, "--launch.cpus_per_device", "0.5"], two_nodes, tmp_path, 600)
        )
        assert assert_same_metrics(base, steps(out)) > 20, name
        roles = by_role(placement(out))
        if name == "disaggregated":  # the engine in an actor of its own, on its own pool
            assert sorted(roles) == ["policy", "ref", "rollout"]
            assert [r["pool"] for r in roles["rollout"]] == ["rollout"]
            assert roles["rollout"][0]["pid"] != roles["policy"][0]["pid"]
        else:  # the policy's actor samples itself; the reference shares its bundle
            assert sorted(roles) == ["policy", "ref"]
            assert (roles["ref"][0]["pool"], roles["ref"][0]["bundle"]) == (
                "policy",
                roles["policy"][0]["bundle"],
            )


def test_a_tensor_parallel_engine_on_ray_matches_torchrun(toy, two_nodes, tmp_path):
    """``--vllm.tensor_parallel_size 2``: under ``torchrun --nproc-per-node 2`` the two ranks form one
    vLLM engine (each submits the engine's whole batch and keeps its rows); on Ray the engine is
    two actors of the rollout group, fed by two policy actors. Same seed and world: same metrics.

    vLLM's CPU backend would name the engine's shared-memory segments alike in every engine: the
    segments a killed engine left under that name (made here) must not stop the run, and the
    runs leave no segment behind."""
    shm = Path("/dev/shm")
    stale = [shm / f"-tp:0-[0-1]-cpushm_{r}" for r in (0, 1)]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    before = {p.name for p in shm.glob("*cpushm*")}
    yaml = cfg_file(grpo_cfg(toy, tmp_path / "torchrun", kl=0.0), tmp_path / "torchrun.yaml")
    try:
        torchrun(["rl", "--config", yaml, "--vllm.tensor_parallel_size", "2"], cwd=tmp_path, timeout=600)
    finally:
        for path in stale:
            path.unlink(missing_ok=True)
    assert {p.name for p in shm.glob("*cpushm*")} <= before
    base = steps(tmp_path / "torchrun")
    assert [r["step"] for r in base] == [1, 2, 3]
    assert all(r["rollout_logprob_diff"] < 1e-4 for r in base), [r["rollout_logprob_diff"] for r in base]

    out = tmp_path / "ray"
    flags = ["--actor.num_gpus_per_node", "2", "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "2"]
    yaml = cfg_file(grpo_cfg(toy, out, kl=0.0), tmp_path / "ray.yaml")
    check_ok(ray_rl(["--config", yaml, *flags, "--launch.cpus_per_device", "0.5"], two_nodes, tmp_path, 600))
    assert assert_same_metrics(base, steps(out)) > 20
    roles = by_role(placement(out))
    assert sorted(roles) == ["policy", "rollout"]
    assert [len(roles["policy"]), len(roles["rollout"])] == [2, 2]  # one engine = two actors
    assert sorted(r["bundle"] for r in roles["rollout"]) == [0, 1]
    assert not list(shm.glob("*cpushm*"))
