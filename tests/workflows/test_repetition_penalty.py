"""The hf sampler's repetition penalty: the formula by hand, and the cached loop against a plain one."""

from __future__ import annotations

import pytest
import torch

from repulse.rl.rollout import HFRolloutEngine, SamplingParams
from repulse.rl.rollout.hf import apply_repetition_penalty


def test_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False], [False, False, True, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.25, 1.5]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


@pytest.fixture(scope="module")
def tiny(toy):
    from repulse.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(toy.llama), padding_side="left")
    return tok, load_causal_lm(str(toy.llama), trainable=False)


def _reference_greedy(model, prompt: list[int], steps: int, penalty: float, eos: int) -> list[int]:
    """Greedy decoding with no cache: the whole sequence through the model at every step."""
    seq = list(prompt)
    out: list[int] = []
    for _ in range(steps):
        logits = model(torch.tensor([seq])).logits[0, -1]
        for tok in set(seq):
            logits[tok] = logits[tok] / penalty if logits[tok] > 0 else logits[tok] * penalty
        nxt = int(logits.argmax())
        out.append(nxt)
        seq.append(nxt)
        if nxt == eos:
            break
    return out


def test_cached_sampler_matches_a_plain_loop_with_the_penalty(tiny):
    tok, model = tiny
    prompts = [tok("say the word dog many times:")["input_ids"], tok("repeat: fish fish")["input_ids"]]
    engine = HFRolloutEngine(
        lambda: model,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        micro_batch_size=8,
        device=torch.device("cpu"),
    )
    with torch.no_grad():
        plain = engine.generate(prompts, 1, SamplingParams(max_new_tokens=12, temperature=0.0))
        penalised = engine.generate(
            prompts, 1, SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=3.0)
        )
        for row, prompt in enumerate(prompts):
            got = penalised.response[row][penalised.action_mask[row].bool()].tolist()
            assert got == _reference_greedy(model, prompt, 12, 3.0, tok.eos_token_id)
            base = plain.response[row][plain.action_mask[row].bool()].tolist()
            assert base == _reference_greedy(model, prompt, 12, 1.0, tok.eos_token_id)
    assert not torch.equal(plain.response, penalised.response)  # the penalty changed something here
