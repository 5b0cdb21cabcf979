"""Reward models as the RePULSe experiments use them (spec §1.8): their own tokenizer, (question,
answer) pairs, their own chat template on the raw question, a chosen classifier logit, prompt-side
truncation; and several reward models combined by ``--reward.reduction``.

The reward models are the toy Llama with a random (seeded) classification head, saved as a plain
HF directory; the expected scores are computed here with ``transformers`` alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repulse.rl.rewards import RewardInput, RewardModelSource, build_reward_sources, combine

QUESTION = "What is the colour of the sky?"
RESPONSE = " It is blue."
RENDERED = f"User: {QUESTION}\nAssistant: "  # the policy's prompt: its own template around the question


def _classifier(toy, out: Path, num_labels: int, seed: int) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(toy.llama, num_labels=num_labels)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    tok = AutoTokenizer.from_pretrained(toy.llama)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rm_dirs(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    return {
        "one": _classifier(toy, root / "one", 1, seed=1),
        "two": _classifier(toy, root / "two", 1, seed=2),
        "cls": _classifier(toy, root / "cls", 2, seed=3),
    }


def _source(path: Path, fmt: str = "concat", max_len: int = 2048, chosen: int | None = None):
    return RewardModelSource(
        str(path), torch.device("cpu"), max_len=max_len, input_format=fmt, chosen_label=chosen,
        offload=False, micro_batch_size=4,
    )  # fmt: skip


def _batch(n: int = 1) -> RewardInput:
    return RewardInput([RENDERED + RESPONSE] * n, [RENDERED] * n, [RESPONSE] * n, [None] * n, [QUESTION] * n)


@torch.no_grad()
def _hf_score(path: Path, ids: list[int], col: int = 0) -> float:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return float(model(input_ids=torch.tensor([ids])).logits[0, col])


def test_pair_format_scores_the_raw_question_and_the_answer(rm_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dirs["one"])
    got = float(_source(rm_dirs["one"], "pair")(_batch())[0])
    assert got == pytest.approx(_hf_score(rm_dirs["one"], tok(QUESTION, RESPONSE)["input_ids"]), abs=1e-5)
    # not the policy's rendered prompt: the template markers would change the score
    assert got != pytest.approx(_hf_score(rm_dirs["one"], tok(RENDERED, RESPONSE)["input_ids"]), abs=1e-3)


def test_chat_format_renders_the_reward_models_own_template_on_the_question(rm_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dirs["one"])
    msgs = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": RESPONSE}]
    ids = tok.apply_chat_template(msgs, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding in transformers 5
    got = float(_source(rm_dirs["one"], "chat")(_batch())[0])
    assert got == pytest.approx(_hf_score(rm_dirs["one"], ids), abs=1e-5)
    assert RENDERED not in tok.decode(ids)  # the policy's template never reaches the RM


def test_concat_format_scores_the_whole_text(rm_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dirs["one"])
    got = float(_source(rm_dirs["one"])(_batch())[0])
    assert got == pytest.approx(_hf_score(rm_dirs["one"], tok(RENDERED + RESPONSE)["input_ids"]), abs=1e-5)


@pytest.mark.parametrize("fmt", ["concat", "pair", "chat"])
def test_max_len_cuts_the_prompt_side_never_the_answer(rm_dirs, fmt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dirs["one"])
    src = _source(rm_dirs["one"], fmt, max_len=16)
    long_question = " ".join(["why is the sky blue and not green"] * 8)
    one = RewardInput([long_question + RESPONSE], [long_question], [RESPONSE], [None], [long_question])
    (full,) = _source(rm_dirs["one"], fmt).encode(one)
    (ids,) = src.encode(one)
    answer = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    assert len(full) > 16 and len(ids) == 16
    assert ids[0] == full[0]  # the first token (BOS / the template's start) is kept
    assert ids[1:] == full[len(full) - 15 :]  # the rest is the tail: the answer and what follows it
    tail = tok.decode(ids)
    assert tok.decode(answer).strip() in tail


def test_chosen_label_picks_one_logit_of_a_classifier(rm_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dirs["cls"])
    ids = tok(RENDERED + RESPONSE)["input_ids"]
    for col in (0, 1):
        got = float(_source(rm_dirs["cls"], chosen=col)(_batch())[0])
        assert got == pytest.approx(_hf_score(rm_dirs["cls"], ids, col), abs=1e-5)
    with pytest.raises(Exception, match="single output"):
        _source(rm_dirs["one"], chosen=1)(_batch())


def test_several_reward_models_are_combined_by_the_reduction(rm_dirs):
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        model_name_or_path=f"{rm_dirs['one']},{rm_dirs['two']}", remote_url=None, max_len=2048,
        input_format="concat", chosen_label=None, offload=False,
    )  # fmt: skip
    sources = build_reward_sources(cfg, torch.device("cpu"), 4)
    assert len(sources) == 2
    batch = RewardInput(
        [RENDERED + RESPONSE, RENDERED + " no"], [RENDERED] * 2, [RESPONSE, " no"], [None] * 2, [QUESTION] * 2
    )
    a, b = (s(batch) for s in sources)
    assert not torch.allclose(a, b)  # two different heads
    torch.testing.assert_close(combine([a, b], "sum"), a + b)
    torch.testing.assert_close(combine([a, b], "mean"), (a + b) / 2)
    torch.testing.assert_close(combine([a, b], "min"), torch.minimum(a, b))


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("input_format", "text", "--reward.input_format must be one of auto, concat, pair, chat"),
        ("reduction", "max", "--reward.reduction must be one of sum, mean, min, got 'max'"),
        ("max_len", 0, "--reward.max_len must be a positive number of tokens"),
        ("timeout_s", 0.0, "--reward.timeout_s must be > 0"),
        ("retries", -1, "--reward.retries must not be negative"),
    ],
)
def test_reward_flags_are_checked_before_anything_loads(field, value, needle):
    from repulse.config.sections import RewardSection
    from repulse.errors import UserError
    from repulse.rl.rewards import check_reward_section

    cfg = RewardSection(model_name_or_path="/nonexistent/rm")
    check_reward_section(cfg)  # the defaults pass
    setattr(cfg, field, value)
    with pytest.raises(UserError, match=needle):
        build_reward_sources(cfg, torch.device("cpu"), 4)  # refused before /nonexistent/rm is opened
