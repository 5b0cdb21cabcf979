"""Exact enumeration of short responses equals brute force (product of conditionals)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from repulse.errors import UserError
from repulse.evaluation.exact import (
    bad_token_ids_from_words,
    enumerate_sequences,
    exact_expectation,
    exact_prob_bad,
)

VOCAB = 12
EOS = 3
PROMPT = [1, 5, 7]


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attention_dropout=0.0,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # sharpen the logits so the distribution is far from uniform
        model.lm_head.weight.mul_(8.0)
    model.train()  # the functions must switch dropout off themselves and restore the mode
    return model


_BRUTE: dict = {}


def _brute_force(model, prompt, max_new_tokens, eos):
    """{response: p} from one full forward per candidate sequence: p = Π_t p(s_t | x, s_<t)."""
    key = (id(model), tuple(prompt), max_new_tokens, tuple(eos))
    if key not in _BRUTE:
        _BRUTE[key] = _brute_force_uncached(model, prompt, max_new_tokens, set(eos))
    return _BRUTE[key]


def _brute_force_uncached(model, prompt, max_new_tokens, eos):
    out = {}
    with torch.no_grad():
        for length in range(1, max_new_tokens + 1):
            seqs = [
                seq
                for seq in itertools.product(range(VOCAB), repeat=length)
                # nothing follows an EOS; a response shorter than the limit must end in EOS
                if not any(t in eos for t in seq[:-1]) and (length == max_new_tokens or seq[-1] in eos)
            ]
            if not seqs:
                continue
            ids = torch.tensor([prompt + list(seq) for seq in seqs])  # equal lengths: no padding
            logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
            for row, seq in enumerate(seqs):
                lp = sum(float(logp[row, len(prompt) - 1 + i, t]) for i, t in enumerate(seq))
                out[seq] = math.exp(lp)
    return out


@pytest.mark.parametrize("eos", [[EOS], [], [0, EOS]])
def test_enumeration_matches_brute_force_and_sums_to_one(tiny_lm, eos):
    enum = enumerate_sequences(tiny_lm, PROMPT, 2, eos, batch_size=5)
    got = enum.as_dict()
    want = _brute_force(tiny_lm, PROMPT, 2, eos)
    assert set(got) == set(want)
    n_open = VOCAB - len(eos)
    assert len(enum) == len(eos) + n_open * VOCAB
    for seq, p in want.items():
        assert got[seq] == pytest.approx(p, rel=1e-5, abs=1e-12)
    assert float(enum.probs.sum()) == pytest.approx(1.0, abs=1e-9)
    assert tiny_lm.training  # mode restored


def test_eos_first_token_is_a_complete_response(tiny_lm):
    enum = enumerate_sequences(tiny_lm, PROMPT, 2, EOS)
    got = enum.as_dict()
    assert (EOS,) in got
    assert not any(len(s) == 2 and s[0] == EOS for s in got)
    with torch.no_grad():
        first = torch.softmax(tiny_lm(input_ids=torch.tensor([PROMPT])).logits[0, -1].double(), -1)
    assert got[(EOS,)] == pytest.approx(float(first[EOS]), rel=1e-6)


def test_three_tokens_sum_to_one(tiny_lm):
    enum = enumerate_sequences(tiny_lm, PROMPT, 3, EOS, batch_size=64)
    assert len(enum) == 1 * (1 + 11 + 11**2) + 11**3  # E·Σ_{d<3} (V-E)^d + (V-E)^3
    assert float(enum.probs.sum()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("eos", [[EOS], []])
@pytest.mark.parametrize("length", [1, 2])
def test_prob_bad_matches_enumeration(tiny_lm, eos, length):
    bad = {2, 9}
    want = sum(p for s, p in _brute_force(tiny_lm, PROMPT, length, eos).items() if bad & set(s))
    got = exact_prob_bad(tiny_lm, None, PROMPT, sorted(bad), length, eos_token_id=eos, batch_size=4)
    assert got == pytest.approx(want, rel=1e-6)
    # the same set given as a predicate, and in the log domain
    got_pred = exact_prob_bad(tiny_lm, None, PROMPT, lambda t: t in bad, length, eos_token_id=eos, log=True)
    assert got_pred == pytest.approx(math.log(want), rel=1e-6)


def test_prob_bad_two_tokens_closed_form(tiny_lm):
    """L = 2: P(t1 ∈ B) + Σ_{t1 ∉ B ∪ EOS} p(t1) P(t2 ∈ B | t1)."""
    bad = [4]
    with torch.no_grad():
        p1 = torch.softmax(tiny_lm(input_ids=torch.tensor([PROMPT])).logits[0, -1].double(), -1)
        total = float(p1[4])
        for t1 in range(VOCAB):
            if t1 in (4, EOS):
                continue
            logits = tiny_lm(input_ids=torch.tensor([PROMPT + [t1]])).logits[0, -1].double()
            total += float(p1[t1]) * float(torch.softmax(logits, -1)[4])
    assert exact_prob_bad(tiny_lm, None, PROMPT, bad, 2, eos_token_id=EOS) == pytest.approx(total, rel=1e-6)


def test_exact_expectation_and_eos_from_tokenizer(tiny_lm):
    mean_len = exact_expectation(tiny_lm, PROMPT, 2, lambda s: len(s), eos_token_id=EOS)
    enum = enumerate_sequences(tiny_lm, PROMPT, 2, EOS)
    p_eos_first = enum.as_dict()[(EOS,)]
    assert mean_len == pytest.approx(1.0 * p_eos_first + 2.0 * (1 - p_eos_first), rel=1e-9)

    class Tok:  # a minimal tokenizer: string prompt -> ids, eos from the tokenizer
        eos_token_id = EOS

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(c) for c in text.split()]}

    got = exact_prob_bad(tiny_lm, Tok(), "1 5 7", [2], 2)
    assert got == pytest.approx(exact_prob_bad(tiny_lm, None, PROMPT, [2], 2, eos_token_id=EOS), rel=1e-12)


def test_bad_words_to_ids():
    class Tok:
        vocab = ["a", " ass", "ass", "Ass ", "bass", "<eos>"]

        def __len__(self):
            return len(self.vocab)

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

    assert bad_token_ids_from_words(Tok(), ["ass"]) == [1, 2, 3]
    assert bad_token_ids_from_words(Tok(), ["ass"], case_sensitive=True) == [1, 2]


def test_guards(tiny_lm):
    with pytest.raises(UserError, match="exact enumeration would need"):
        enumerate_sequences(tiny_lm, PROMPT, 3, EOS, max_sequences=100)
    with pytest.raises(ValueError, match="at least one token"):
        enumerate_sequences(tiny_lm, [], 2, EOS)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        exact_prob_bad(tiny_lm, None, PROMPT, [VOCAB + 3], 2, eos_token_id=EOS)


def test_model_without_logits_to_keep(tiny_lm):
    class Plain(torch.nn.Module):  # a wrapper whose forward takes no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, use_cache=False):
            return self.inner(input_ids=input_ids, use_cache=use_cache)

    want = exact_prob_bad(tiny_lm, None, PROMPT, [2, 9], 2, eos_token_id=EOS)
    assert exact_prob_bad(Plain(tiny_lm), None, PROMPT, [2, 9], 2, eos_token_id=EOS) == pytest.approx(
        want, rel=1e-6
    )


# --------------------------------------------------------------------------- reward events


def test_reward_tail_hand_computed():
    """p = (1/2, 1/4, 1/8, 1/8), r = (2, -2, -3, -5), η = -2 (a reward equal to η is not bad):
    P(bad) = 1/4; E[r] = 1 - 1/2 - 3/8 - 5/8 = -1/2; H = (1/2 + 1/2 + 3/4) ln 2 = 1.75 ln 2;
    against the uniform reference KL = (1/2)ln 2 + 0 + 2·(1/8)·ln(1/2) = (1/4) ln 2."""
    from repulse.evaluation.exact import reward_tail

    lp = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64).log()
    r = torch.tensor([2.0, -2.0, -3.0, -5.0])
    ref = torch.full((4,), 0.25, dtype=torch.float64).log()
    s = reward_tail(
        lp, r, -2.0, ref_log_probs=ref, indicators={"odd": torch.tensor([True, False, True, False])}
    )
    assert s["p_bad"] == pytest.approx(0.25, abs=1e-15)
    assert s["log_p_bad"] == pytest.approx(math.log(0.25), abs=1e-15)
    assert s["avg_reward"] == pytest.approx(-0.5, abs=1e-15)
    assert s["entropy"] == pytest.approx(1.75 * math.log(2), abs=1e-15)
    assert s["kl"] == pytest.approx(0.25 * math.log(2), abs=1e-15)
    assert s["share_odd"] == pytest.approx(0.625, abs=1e-15)
    # a tiny bad mass keeps its digits in the log domain; none at all is -inf
    tiny = torch.tensor([0.0, -800.0])
    assert reward_tail(tiny, torch.tensor([1.0, -1.0]), 0.0)["log_p_bad"] == pytest.approx(-800.0)
    none = reward_tail(lp, r, -10.0)
    assert none["log_p_bad"] == -math.inf and none["p_bad"] == 0.0
    with pytest.raises(ValueError, match="rewards"):
        reward_tail(lp, r[:3], 0.0)


def test_kl_regularized_optimum_hand_computed():
    """p_ref = (1/2, 1/2), r = (0, 2 ln 3), λ = 2: p* ∝ (1/2, 1/2·3) = (1/4, 3/4); and no other
    distribution scores higher on E[r] - λ·KL(p ‖ p_ref)."""
    from repulse.evaluation.exact import kl_regularized_optimum, reward_tail

    ref = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    r = torch.tensor([0.0, 2 * math.log(3)], dtype=torch.float64)
    lp = kl_regularized_optimum(ref, r, 2.0)
    torch.testing.assert_close(lp.exp(), torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-15, rtol=0)

    def objective(q: float) -> float:
        s = reward_tail(torch.tensor([1 - q, q], dtype=torch.float64).log(), r, -1e9, ref_log_probs=ref)
        return s["avg_reward"] - 2.0 * s["kl"]

    assert all(objective(0.75) > objective(q) for q in (0.5, 0.7, 0.74, 0.76, 0.8, 0.99))
    with pytest.raises(ValueError, match="kl_coef"):
        kl_regularized_optimum(ref, r, 0.0)


def test_score_enumeration_batches_in_order(tiny_lm):
    """The reward table follows the enumeration's order whatever the batch size; a scorer that
    returns the wrong number of rewards is refused."""
    from repulse.evaluation.exact import score_enumeration

    enum = enumerate_sequences(tiny_lm, PROMPT, 2, [EOS])
    calls = []

    def score(batch):
        calls.append(len(batch))
        return [10.0 * s[0] + (s[1] if len(s) > 1 else -1) for s in batch]

    table = score_enumeration(enum, score, batch_size=7)
    expected = [10.0 * s[0] + (s[1] if len(s) > 1 else -1) for s in enum.sequences]
    assert table.tolist() == expected and table.dtype == torch.float64
    assert calls[:-1] == [7] * (len(calls) - 1) and sum(calls) == len(enum)
    with pytest.raises(ValueError, match="returned 1 rewards"):
        score_enumeration(enum, lambda batch: [0.0], batch_size=4)
