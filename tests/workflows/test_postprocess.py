"""The seed's post-processors and the reward normalisation: pure functions, hand-derived numbers."""

from __future__ import annotations

import math

import pytest

from repulse.errors import UserError
from repulse.workflows.postprocess import (
    conditional_sft,
    format_reward,
    iterative_dpo,
    normalize_rewards,
    post_process,
    rejection_sampling,
)


def _rows(*triples):
    return [{"input": i, "output": o, "reward": r, "label": f"{i}-label"} for i, o, r in triples]


def test_normalize_rewards_population_std():
    # mean 3; squared deviations 4, 1, 0, 9 -> variance 14/4 = 3.5; std sqrt(3.5) = 1.870829
    z = normalize_rewards([1.0, 2.0, 3.0, 6.0])
    s = math.sqrt(3.5)
    assert z == pytest.approx([-2 / s, -1 / s, 0.0, 3 / s])
    assert z == pytest.approx([-1.069045, -0.534522, 0.0, 1.603567], abs=1e-6)


def test_normalize_rewards_all_equal_is_zero():
    assert normalize_rewards([2.5, 2.5, 2.5]) == [0.0, 0.0, 0.0]
    assert normalize_rewards([]) == []


def test_rejection_sampling_keeps_the_best_per_prompt_first_on_ties():
    rows = _rows(("a", "a1", 0.1), ("b", "b1", 5.0), ("a", "a2", 0.7), ("a", "a3", 0.7), ("b", "b2", -1.0))
    best = rejection_sampling(rows)
    assert [(r["input"], r["output"], r["reward"]) for r in best] == [("a", "a2", 0.7), ("b", "b1", 5.0)]
    assert best[0]["label"] == "a-label"  # the row's other keys stay


def test_iterative_dpo_pairs_best_and_worst():
    rows = _rows(
        ("a", "a1", 0.1), ("a", "a2", 0.9), ("a", "a3", -0.5), ("b", "b1", 2.0), ("b", "b2", 3.0),
        ("a", "a4", -0.5), ("b", "b3", 3.0),  # ties: the first best and the first worst win
    )  # fmt: skip
    pairs = iterative_dpo(rows)
    assert pairs == [
        {"label": "a-label", "prompt": "a", "chosen": "a2", "chosen_reward": 0.9, "rejected": "a3",
         "rejected_reward": -0.5},
        {"label": "b-label", "prompt": "b", "chosen": "b2", "chosen_reward": 3.0, "rejected": "b1",
         "rejected_reward": 2.0},
    ]  # fmt: skip


def test_iterative_dpo_drops_prompts_whose_responses_are_all_the_same():
    rows = _rows(("a", "same", 0.1), ("a", "same", 0.4), ("b", "b1", 1.0), ("b", "b2", 0.0))
    assert [p["prompt"] for p in iterative_dpo(rows)] == ["b"]


def test_iterative_dpo_with_one_response_per_prompt_is_one_paragraph():
    with pytest.raises(UserError, match="at least two responses per prompt.*each of the 2 prompts has one"):
        iterative_dpo(_rows(("a", "a1", 0.1), ("b", "b1", 0.2)))


def test_conditional_sft_writes_the_reward_into_the_input():
    rows = _rows(("User: hi {x}\nAssistant: ", "hello", 1.234), ("q", "r", -0.004))
    out = conditional_sft(rows)
    assert out[0]["input"] == "User: hi {x}\nAssistant:  <rm_score>: 1.23 "
    assert out[1]["input"] == "q <rm_score>: -0.00 "
    assert out[0]["output"] == "hello" and out[0]["reward"] == 1.234
    custom = conditional_sft(rows, "[{reward}] {input}")
    assert custom[0]["input"] == "[1.23] User: hi {x}\nAssistant: "
    assert format_reward(1.5) == "1.50"


def test_conditional_sft_template_must_place_input_and_reward():
    with pytest.raises(UserError, match=r"has no \{reward\}"):
        conditional_sft(_rows(("q", "r", 1.0)), "{input} score")


def test_post_process_caps_then_normalises_then_processes():
    rows = _rows(("a", "a1", 1.0), ("a", "a2", 9.0), ("b", "b1", 3.0), ("b", "b2", 2.0))
    # cap 5: rewards 1, 5, 3, 2 -> mean 2.75, deviations -1.75 2.25 .25 -.75, variance 8.75/4 = 2.1875
    out = post_process(rows, "rs", normalize=True, template="{input}{reward}", cap=5.0)
    s = math.sqrt(2.1875)
    assert [(r["output"], r["reward"]) for r in out] == [
        ("a2", pytest.approx(2.25 / s)),
        ("b1", pytest.approx(0.25 / s)),
    ]
    assert rows[1]["reward"] == 9.0  # the input rows are not changed
