"""The demo's world: its reward table is what an RL step computes for the same responses, and
its η is chosen by the stated rule."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_reward_table_is_what_rl_scores(demo_lm_rm):
    """Responses drawn by the RL sampler and scored by the RL reward path (``LocalRewards`` over
    ``Samples``) get exactly the reward the world's table lists for them; the table's probabilities
    are the pretrained LM's (they sum to 1)."""
    from transformers import AutoTokenizer

    from repulse.models.loading import load_causal_lm
    from repulse.rl.rewards import build_reward_sources
    from repulse.rl.rollout import hf_generate
    from repulse.rl.scoring import LocalRewards
    from repulse.workflows.demo.world import TABLE_FILE, prompt_item, reward_config

    lm, rm = demo_lm_rm
    table = torch.load(lm.parent / TABLE_FILE, weights_only=False)
    assert float(table["ref_log_probs"].exp().sum()) == pytest.approx(1.0, abs=1e-9)
    tok = AutoTokenizer.from_pretrained(lm)
    prompt = prompt_item(tok, lm.parent / "prompt.jsonl")
    model = load_causal_lm(str(lm), device="cpu")
    torch.manual_seed(0)
    samples = hf_generate(
        model, [prompt["prompt_ids"]], n_samples=64, max_new_tokens=2, temperature=1.5, top_p=1.0, top_k=0,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, micro_batch_size=64, device=torch.device("cpu"),
    )  # fmt: skip
    section = reward_config(rm)
    rewards, _ = LocalRewards(tok, build_reward_sources(section, torch.device("cpu"), 64), "sum").score(
        samples, [prompt]
    )
    index = {seq: i for i, seq in enumerate(table["sequences"])}
    seen = set()
    for row, mask, r in zip(samples.response, samples.action_mask, rewards):
        seq = tuple(row[mask.bool()].tolist())
        seen.add(seq)
        assert float(table["rewards"][index[seq]]) == pytest.approx(float(r), abs=1e-5), tok.decode(list(seq))
    assert len(seen) > 10  # many different responses, not one


def test_eta_rule():
    """Separated sets: the midpoint of the gap. Overlapping: the cut with the fewest errors."""
    from repulse.workflows.demo.world import choose_eta

    bad = torch.tensor([True, True, False, False, False])
    eta, info = choose_eta(torch.tensor([-5.0, -3.0, -1.0, 2.0, 4.0]), bad)
    assert eta == -2.0 and info["separated"] and info["misclassified"] == 0
    # one non-bad response at -4 among the bad ones: the best cut, between -3 and 2, misclassifies only it
    eta, info = choose_eta(torch.tensor([-5.0, -3.0, -4.0, 2.0, 4.0]), bad)
    assert eta == -0.5 and not info["separated"] and info["misclassified"] == 1


@pytest.mark.slow
def test_a_run_retrained_into_its_directory_starts_over(demo_lm_rm, tmp_path):
    """Running a demo run again where it already ran (a re-run of ``repulse demo`` into the same
    --out) is not refused as another run's directory: the run starts from an empty directory (a
    stale file left there is gone) and ends with the same exact numbers (same seed); with resume the
    finished run is reused, not retrained."""
    import json

    from repulse.toy import demo_corpus as corpus
    from repulse.workflows.demo.runner import Job, run_all
    from repulse.workflows.demo.sweep import RunSpec, settings
    from repulse.workflows.demo.world import TABLE_FILE

    lm, rm = demo_lm_rm
    root = lm.parent
    setting = settings(quick=True)["kl0"]
    spec = RunSpec("kl0", "reinforce", 1, setting.grids["reinforce"][1], 7)
    world = {
        "lm": str(lm),
        "rm": str(rm),
        "prompt_file": str(root / "prompt.jsonl"),
        "table_file": str(root / TABLE_FILE),
    }
    eta = json.loads((root / "world.json").read_text())["eta"]
    job = Job(spec, setting, str(tmp_path / "runs" / spec.name), world, eta, tuple(corpus.BAD_WORDS), "w")
    lines = []
    first = run_all([job], 1, False, lines.append, lambda j, s: "")[spec.name]
    stale = tmp_path / "runs" / spec.name / "stale.txt"
    stale.write_text("from an earlier demo")
    again = run_all([job], 1, False, lines.append, lambda j, s: "")[spec.name]
    assert not stale.exists()
    assert again["p_bad"] == first["p_bad"] and again["avg_reward"] == first["avg_reward"]
    reused = run_all([job], 1, True, lines.append, lambda j, s: "")[spec.name]
    assert reused.get("reused") is True and reused["p_bad"] == first["p_bad"]
