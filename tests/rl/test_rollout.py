"""The hf rollout backend: KV-cached sampling with a shared prefill per prompt.

Checked against Hugging Face ``generate`` (greedy: the same tokens), against a full forward (the
sampler's per-token log-probs equal the training forward's at the same temperature, through left
padding, the repeated cache and EOS), and by hand for the sampler (top-k, top-p, greedy).
"""

from __future__ import annotations

import math

import pytest
import torch

from repulse.rl.rollout import hf_generate, response_mask, sample_next

PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50], [1, 60, 61, 62]]  # ragged: left padding matters


def _model(toy, arch):
    from repulse.models.loading import disable_dropout, load_causal_lm

    return disable_dropout(load_causal_lm(str(getattr(toy, arch)), trainable=False))


def _gen(model, n=1, temperature=1.0, top_p=1.0, top_k=0, max_new=12, eos=2, micro=64):
    return hf_generate(
        model, PROMPTS, n_samples=n, max_new_tokens=max_new, temperature=temperature, top_p=top_p,
        top_k=top_k, eos_id=eos, pad_id=0, micro_batch_size=micro, device=torch.device("cpu"),
    )  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_equals_hugging_face_generate(toy, arch):
    from repulse.rl.rollout import left_pad

    model = _model(toy, arch)
    ours = _gen(model, n=2, temperature=0.0)
    ids, mask = left_pad(PROMPTS, 0)
    hf = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=2
    )[:, ids.shape[1] :]
    for i in range(len(PROMPTS)):
        for j in range(2):  # both samples of a prompt: greedy, so identical
            row = ours.response[2 * i + j]
            valid = int(ours.action_mask[2 * i + j].sum())
            assert row[:valid].tolist() == hf[i, :valid].tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampler_logprobs_equal_a_full_forward(toy, arch):
    from repulse.rl.experience import action_logprobs

    torch.manual_seed(0)
    model = _model(toy, arch)
    s = _gen(model, n=3, temperature=0.7, micro=4)  # 1 prompt (3 rows) per decoding batch
    full, _ = action_logprobs(model, s, temperature=0.7)
    assert s.logprobs.shape == full.shape
    torch.testing.assert_close(s.logprobs, full, atol=2e-5, rtol=1e-5)
    assert (s.logprobs[s.action_mask == 0] == 0).all()
    assert s.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({tuple(r.tolist()) for r in s.response[:3]}) > 1  # a prompt's samples differ


def test_sample_next_by_hand():
    # probabilities (.5, .3, .2) at temperature 1
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(4000, 1)
    torch.manual_seed(0)
    tok, lp = sample_next(logits, 1.0, 1.0, 0)
    freq = torch.bincount(tok, minlength=3).float() / len(tok)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.03, rtol=0)
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.5, 0.3, 0.2]))[tok])
    tok, _ = sample_next(logits, 1.0, 1.0, 2)  # top-k 2: the third is never drawn
    assert set(tok.tolist()) == {0, 1}
    # top-p 0.6: mass before each token is (0, .5, .8); keep those below .6 -> tokens 0 and 1
    tok, lp = sample_next(logits, 1.0, 0.6, 0)
    assert set(tok.tolist()) == {0, 1}
    # the log-density is the one that drew the token: renormalised over the kept set {.5, .3}
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.5 / 0.8, 0.3 / 0.8, 1.0]))[tok])
    tok, _ = sample_next(logits, 1.0, 0.45, 0)  # below the first token's mass: only it
    assert set(tok.tolist()) == {0}
    tok, lp = sample_next(logits[:2], 0.0, 1.0, 0)  # greedy
    assert tok.tolist() == [0, 0] and lp[0].item() == pytest.approx(math.log(0.5))
    # temperature 2 flattens: log p = log softmax(logits / 2)
    tok, lp = sample_next(logits[:1], 2.0, 1.0, 0)
    assert lp.item() == pytest.approx(torch.log_softmax(logits[0] / 2, -1)[tok.item()].item())


def test_sampler_density_at_temperature_with_top_k_by_hand():
    """T = 0.5 squares the probabilities: (.5, .3, .2) -> (.25, .09, .04) / .38; top-k 2 keeps the
    first two, renormalised: (.25, .09) / .34. The density that drew a token is that, not π(a)."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(2000, 1)
    torch.manual_seed(0)
    tok, lp = sample_next(logits, 0.5, 1.0, 2)
    assert set(tok.tolist()) == {0, 1}
    expected = torch.log(torch.tensor([0.25 / 0.34, 0.09 / 0.34, 1.0]))[tok]
    torch.testing.assert_close(lp, expected)
    freq = float((tok == 0).float().mean())
    assert freq == pytest.approx(0.25 / 0.34, abs=0.03)


def test_top_k_one_is_greedy(toy):
    model = _model(toy, "llama")
    torch.manual_seed(1)
    a = _gen(model, n=2, temperature=1.0, top_k=1)
    b = _gen(model, n=2, temperature=0.0)
    assert torch.equal(a.sequences, b.sequences)


def test_response_mask_keeps_eos_and_flags_truncation():
    resp = torch.tensor([[5, 2, 7, 7], [5, 6, 7, 8], [2, 9, 9, 9]])
    mask, truncated = response_mask(resp, eos_id=2, pad_id=0)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]
