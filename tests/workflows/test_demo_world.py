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
