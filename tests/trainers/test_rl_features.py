"""``repulse rl`` features end to end on the toy: dynamic filtering (1 and 2 processes), critic
freezing steps, several update epochs per rollout, and labels reaching the reward function.

Same toy set-up as ``test_rl`` (``rl_cfg``: 8 prompts x 4 samples x <= 8 new tokens per step, one
optimizer step per rollout, lr 1e-2). The reward here is ``rl_reward_binary.py``: 1 if the
response contains an ``a``, else 0, which the random-init policy gets on about 2/3 of its
samples, so prompt groups of 4 are a mix of all-0, all-1 (both dropped by the default range
(0, 1)) and mixed ones (kept). The reward function also logs every call it gets (prompts,
responses, labels, rewards, rank) to a file, which is what the tests check the trainer against.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_rl import load_weights, rl_cfg, run_rl, steps
from test_rm import cfg_file, torchrun

BINARY = Path(__file__).with_name("rl_reward_binary.py")


def calls(log: Path) -> list[dict]:
    """The reward function's calls, in order (one JSON line each)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def groups(call: dict, n: int) -> list[dict]:
    """A call's prompt groups (rows of one prompt are consecutive): pairs and mean reward."""
    out = []
    for s in range(0, len(call["rewards"]), n):
        rewards = call["rewards"][s : s + n]
        out.append(
            {
                "mean": sum(rewards) / n,
                "pairs": list(zip(call["prompts"][s : s + n], call["responses"][s : s + n])),
                "prompts": set(call["prompts"][s : s + n]),
            }
        )
    return out


def dumped_pairs(dump: Path) -> set[tuple[str, str]]:
    rows = [json.loads(line) for line in dump.read_text().splitlines() if line.strip()]
    return {(r["prompt"], r["response"]) for r in rows}


def binary_cfg(toy, out: Path, log: Path, monkeypatch, **over):
    monkeypatch.setenv("REPULSE_TEST_REWARD_LOG", str(log))
    return rl_cfg(toy, out, reward__remote_url=str(BINARY), **over)


def inside(mean: float, lo: float = 0.0, hi: float = 1.0) -> bool:
    return lo < mean < hi


# --------------------------------------------------------------------------- 1. dynamic filtering


@pytest.mark.slow
def test_dynamic_filtering_keeps_exactly_the_groups_with_mixed_rewards(toy, tmp_path, monkeypatch):
    """group_norm, 4 samples per prompt, binary reward, default range (0, 1), 4 steps of 8 groups.

    From the reward function's own log, per step: ``kept_groups`` is the number of groups whose
    mean is strictly inside (0, 1) (all-0 and all-1 groups, means exactly 0.0 and 1.0, are
    dropped: the range is open), ``kept_fraction`` is that over 8 (exact: multiples of 1/8),
    ``reward`` is still the mean over all 32 samples (logged before filtering). Every sample that
    reached the update (all dumped by ``--repulse.save_negdata`` with an infinite threshold; the
    dump holds the experience after filtering, deduplicated by (prompt, response)) is from a kept
    group, and every kept group's samples are there. Steps where nothing is kept do no update
    (no ``policy_loss``). Precondition: both kept and dropped groups occur over the 4 steps, so
    neither half of the check is vacuous (seed 42, measured: 27 kept, 5 dropped, one of them
    all-0 and four all-1, so both open ends of the range are exercised)."""
    log, dump = tmp_path / "calls.jsonl", tmp_path / "kept.jsonl"
    over = dict(
        algo__advantage__estimator="group_norm",
        algo__dynamic_filtering_enable=True,
        train__max_steps=4,
        repulse__save_negdata=str(dump),
        repulse__negdata_threshold=1e9,
    )
    rows = run_rl(binary_cfg(toy, tmp_path / "out", log, monkeypatch, **over))
    got = calls(log)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert len(got) == 4  # one reward call per step (no evaluation set)
    kept_pairs: set[tuple[str, str]] = set()
    n_kept = n_dropped = 0
    for row, call in zip(rows, got):
        gs = groups(call, 4)
        assert len(gs) == 8
        kept = [g for g in gs if inside(g["mean"])]
        n_kept, n_dropped = n_kept + len(kept), n_dropped + len(gs) - len(kept)
        assert row["kept_groups"] == len(kept), (row["step"], [g["mean"] for g in gs])
        assert row["kept_fraction"] == len(kept) / 8, row
        assert row["reward"] == pytest.approx(sum(call["rewards"]) / 32, abs=1e-6)
        assert ("policy_loss" in row) == (len(kept) > 0), row
        for g in kept:
            kept_pairs.update(g["pairs"])
    assert n_kept > 0 and n_dropped > 0, (n_kept, n_dropped)
    assert dumped_pairs(dump) == kept_pairs


@pytest.mark.slow
def test_dynamic_filtering_with_a_constant_reward_never_updates(toy, tmp_path, monkeypatch):
    """Every sample scores 1.0, so every group's mean is 1.0, not strictly below the range's top
    1.0: all groups are dropped at every step. The run still completes and logs steps 1..3
    (``kept_groups`` 0, ``kept_fraction`` 0.0, reward 1.0, no policy metrics), and the exported
    policy equals the initial toy weights bit for bit: no optimizer step ran (an Adam step on a
    zero gradient would still move nothing, but none is taken: there are no policy metrics)."""
    monkeypatch.setenv("REPULSE_TEST_REWARD_CONST", "1.0")
    over = dict(algo__advantage__estimator="rloo", algo__dynamic_filtering_enable=True, train__max_steps=3)
    out = tmp_path / "out"
    rows = run_rl(binary_cfg(toy, out, tmp_path / "calls.jsonl", monkeypatch, **over))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["kept_groups"] == 0 and r["kept_fraction"] == 0.0 and r["reward"] == 1.0, r
        assert "policy_loss" not in r and "actor_grad_norm" not in r, r
    assert len(calls(tmp_path / "calls.jsonl")) == 3
    start, end = load_weights(toy.llama), load_weights(out)
    assert start.keys() == end.keys()
    for k in start:
        assert torch.equal(start[k], end[k]), k


@pytest.mark.slow
@pytest.mark.distributed
def test_dynamic_filtering_on_two_processes_keeps_the_same_number_of_groups(toy, tmp_path, monkeypatch):
    """``torchrun`` 2 processes (fsdp, gloo), RLOO, binary reward, filtering on, 3 steps; each rank
    samples 4 prompts x 4. From the reward log (each call tagged with its rank): the logged
    ``kept_groups`` is the minimum over the two ranks of the groups kept there (every rank must run
    the same number of forwards on a sharded engine, or the run hangs: the torchrun call has a
    240 s timeout), ``kept_fraction`` the mean of the ranks' own fractions (metrics are averaged
    over ranks; multiples of 1/8, exact), and the samples that reached the update (the gathered
    dump) are exactly each rank's first ``kept_groups`` kept groups. Seed 42, measured: the ranks
    keep 4|2, 3|3 and 1|3 groups at steps 1-3, so the minimum truncates one rank at two steps."""
    log, dump = tmp_path / "calls.jsonl", tmp_path / "kept.jsonl"
    over = dict(
        algo__advantage__estimator="rloo",
        algo__dynamic_filtering_enable=True,
        train__max_steps=3,
        train__batch_size=32,
        train__micro_batch_size=8,
        engine__backend="fsdp",
        repulse__save_negdata=str(dump),
        repulse__negdata_threshold=1e9,
    )
    cfg = binary_cfg(toy, tmp_path / "two", log, monkeypatch, **over)
    cfg.engine.param_dtype = "fp32"
    torchrun(["rl", "--config", cfg_file(cfg, tmp_path / "two.yaml")], cwd=tmp_path, timeout=240)
    rows = steps(tmp_path / "two")
    assert [r["step"] for r in rows] == [1, 2, 3]
    got = calls(log)
    by_rank = {rank: [c for c in got if c["rank"] == rank] for rank in (0, 1)}
    assert [len(v) for v in by_rank.values()] == [3, 3]
    expected_pairs: set[tuple[str, str]] = set()
    for i, row in enumerate(rows):
        kept = {rank: [g for g in groups(by_rank[rank][i], 4) if inside(g["mean"])] for rank in (0, 1)}
        assert all(len(by_rank[rank][i]["rewards"]) == 16 for rank in (0, 1))
        k = min(len(kept[0]), len(kept[1]))
        assert row["kept_groups"] == k, (row, {r: len(v) for r, v in kept.items()})
        assert row["kept_fraction"] == pytest.approx((len(kept[0]) + len(kept[1])) / 8, abs=1e-12), row
        assert ("policy_loss" in row) == (k > 0), row
        for rank in (0, 1):
            for g in kept[rank][:k]:
                expected_pairs.update(g["pairs"])
    assert dumped_pairs(dump) == expected_pairs


# --------------------------------------------------------------------------- 2. critic freezing


@pytest.mark.slow
def test_critic_freezing_steps_train_only_the_critic_first(toy, tmp_path):
    """gae, ``--critic.freezing_steps 2``, 4 steps, a checkpoint after step 2. After steps 1-2 the
    actor (checkpointed) equals the initial toy weights bit for bit while the critic's body (also
    initialised from the toy Llama) has moved; rows 1-2 have a ``value_loss`` but no
    ``policy_loss``. Steps 3-4 train both: rows with ``policy_loss`` and ``actor_grad_norm``, and
    the final actor and critic both differ from their step-2 checkpoints."""
    over = dict(
        algo__advantage__estimator="gae",
        critic__freezing_steps=2,
        critic__save_value_network=True,
        train__max_steps=4,
        ckpt__save_steps=2,
    )
    out = tmp_path / "out"
    rows = run_rl(rl_cfg(toy, out, **over))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows[:2]:
        assert "policy_loss" not in r and "actor_grad_norm" not in r and "value_loss" in r, r
    for r in rows[2:]:
        assert "policy_loss" in r and "actor_grad_norm" in r and "value_loss" in r, r
    start = load_weights(toy.llama)
    ckpt = out / "checkpoints" / "step_2"
    actor2, critic2 = load_weights(ckpt / "actor"), load_weights(ckpt / "critic")
    assert actor2.keys() == start.keys()
    assert all(torch.equal(start[k], actor2[k]) for k in start)
    body = [k for k in critic2 if k in start]
    assert body and any(not torch.equal(start[k], critic2[k]) for k in body)
    actor4, critic4 = load_weights(out), load_weights(out / "critic")
    assert any(not torch.equal(actor2[k], actor4[k]) for k in actor2)
    assert any(not torch.equal(critic2[k], critic4[k]) for k in critic2)


# --------------------------------------------------------------------------- 3. update epochs


def optimizer_steps(engine_dir: Path) -> tuple[set[int], int]:
    """(Adam's per-parameter step counts, the scheduler's step count) of a checkpointed engine."""
    optim = torch.load(engine_dir / "optimizer.pt", weights_only=False)
    sched = torch.load(engine_dir / "scheduler.pt", weights_only=False)
    return {int(s["step"]) for s in optim["state"].values()}, int(sched["last_epoch"])


@pytest.mark.slow
def test_second_update_epoch_sees_moved_weights_and_steps_twice(toy, tmp_path):
    """RLOO, one optimizer step per rollout pass (train batch = all 32 samples), 2 steps, a
    checkpoint after step 1. With ``--algo.max_epochs 1`` every update is the first one on its
    rollout, so mean |log π − log π_old| is exactly 0.0; with 2 epochs the second pass runs on
    weights the first pass moved, so its mean over the two passes is > 0 (measured 0.20 and 0.44
    at steps 1 and 2; the bound 1e-6 only excludes exact zero and float noise). The checkpoint after one rollout shows 1 vs 2 optimizer steps: Adam's step count and the
    lr scheduler's."""
    ratios, counts = {}, {}
    for epochs in (1, 2):
        over = dict(
            algo__advantage__estimator="rloo", algo__max_epochs=epochs, train__max_steps=2, ckpt__save_steps=1
        )
        out = tmp_path / f"epochs{epochs}"
        rows = run_rl(rl_cfg(toy, out, **over))
        assert [r["step"] for r in rows] == [1, 2]
        ratios[epochs] = [r["policy_abs_log_ratio"] for r in rows]
        counts[epochs] = optimizer_steps(out / "checkpoints" / "step_1" / "actor")
    assert ratios[1] == [0.0, 0.0], ratios
    assert all(x > 1e-6 for x in ratios[2]), ratios
    assert counts[1] == ({1}, 1) and counts[2] == ({2}, 2), counts


# --------------------------------------------------------------------------- 4. labels


@pytest.mark.slow
def test_reward_function_gets_each_prompts_own_label_once_per_rollout(toy, tmp_path, monkeypatch):
    """16 prompts (the toy's, made unique by a number) whose label, under a non-default key
    (``--data.label_key answer``), is unique per prompt (``gold-<i>``), so a label paired with the
    wrong prompt, shifted by a row, repeated for a batch or dropped (None) is caught. 2 steps of
    8 prompts x 4 samples = one episode: reward_func is called exactly twice (once per rollout
    batch), with 32 samples each, every (prompt, label) it gets is the dataset's, each call holds 8
    distinct prompts 4 times each, and the two calls together cover all 16 prompts."""
    source = [json.loads(line) for line in toy.prompts.read_text().splitlines()[:16]]
    rows = [{"input": f"{r['input']} #{i}", "answer": f"gold-{i}"} for i, r in enumerate(source)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = {r["input"]: r["answer"] for r in rows}
    log = tmp_path / "calls.jsonl"
    over = dict(algo__advantage__estimator="rloo", data__prompt_dataset=str(data), data__label_key="answer")
    cfg = binary_cfg(toy, tmp_path / "out", log, monkeypatch, **over)
    cfg.train.num_episodes = 1
    logged = run_rl(cfg)
    assert [r["step"] for r in logged] == [1, 2]
    got = calls(log)
    assert len(got) == 2
    seen: list[str] = []
    for call in got:
        assert len(call["prompts"]) == len(call["labels"]) == 32
        for prompt, label in zip(call["prompts"], call["labels"]):
            assert label == expected[prompt], (prompt, label)
        distinct = list(dict.fromkeys(call["prompts"]))
        assert len(distinct) == 8 and all(call["prompts"].count(p) == 4 for p in distinct)
        seen += distinct
    assert sorted(seen) == sorted(expected)
