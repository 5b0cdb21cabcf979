"""Reward inputs fit the reward model: every consumer cuts an input to what the model can read (the
least of ``--reward.max_len``, its position embeddings and its tokenizer's limit), the prompt side
first and the answer kept, counts it, and never fails the batch.

The reward model here is the toy GPT-2 (learned positions, ``n_positions`` 512) with a seeded
classification head: without the cut, a 2,000-token prompt is an IndexError in its position
embedding, so these tests fail if any consumer lets a long input through.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from repulse.rl.reward_http import HTTPRewardSource
from repulse.rl.rewards import RewardInput, RewardModelSource, fit_to_length, input_limit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reward_format import ServeRm  # noqa: E402

RESPONSE = " horse horse horse."


def _long_question(tok, tokens: int = 2000) -> str:
    text = "say the word horse many times, and then say the word grape:"
    while len(tok(text)["input_ids"]) < tokens:
        text += " say the word horse many times, and then say the word grape:"
    return text


@pytest.fixture(scope="module")
def gpt2_rm(toy, tmp_path_factory) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("gpt2_rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(toy.gpt2, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    tok = AutoTokenizer.from_pretrained(toy.gpt2)
    model.config.pad_token_id = tok.pad_token_id
    assert model.config.max_position_embeddings == 512
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@torch.no_grad()
def _hf(path: Path, ids: list[int]) -> float:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def _source(path: Path, max_len: int = 2048) -> RewardModelSource:
    return RewardModelSource(
        str(path), torch.device("cpu"), max_len=max_len, input_format="auto", chosen_label=None,
        offload=False, micro_batch_size=4,
    )  # fmt: skip


# --------------------------------------------------------------------------- the rules, by hand


@pytest.mark.parametrize(
    "head, answer, limit, keep, expected, cut",
    [
        ([0, 1, 2, 3], [7, 8], 6, 1, [0, 1, 2, 3, 7, 8], False),  # fits: untouched
        ([0, 1, 2, 3, 4, 5], [7, 8], 5, 1, [0, 4, 5, 7, 8], True),  # bos kept, prompt's start cut
        ([0, 9, 1, 2, 3], [7, 8], 5, 2, [0, 9, 3, 7, 8], True),  # two leading specials kept
        ([0, 1, 2], [7, 8, 9, 10], 4, 1, [0, 8, 9, 10], True),  # the answer alone is too long: its end stays
        ([0, 1, 2], [7, 8], 2, 1, [0, 8], True),  # room for nothing of the prompt
        ([], [7, 8, 9], 2, 1, [8, 9], True),  # no prompt side at all
    ],
)
def test_fit_to_length_cuts_the_prompt_side_first(head, answer, limit, keep, expected, cut):
    assert fit_to_length(head, answer, limit, keep) == (expected, cut)


def test_input_limit_is_the_least_of_flag_positions_and_tokenizer():
    cfg = SimpleNamespace(max_position_embeddings=512)
    assert input_limit(cfg, SimpleNamespace(model_max_length=int(1e30)), 2048) == 512  # "no limit" ignored
    assert input_limit(cfg, SimpleNamespace(model_max_length=300), 2048) == 300
    assert input_limit(cfg, SimpleNamespace(model_max_length=300), 100) == 100
    assert input_limit(SimpleNamespace(), SimpleNamespace(), 2048) == 2048


# --------------------------------------------------------------------------- every consumer


def test_a_2000_token_prompt_is_cut_to_the_models_positions_and_counted(gpt2_rm):
    """In-process scoring (RL's and eval-tail's source) with ``--reward.max_len 2048`` on a
    512-position model: a batch of one 2,000-token prompt and one short one scores; the long one
    equals transformers on its first token + last 511 tokens (the answer among them), the short one
    is untouched; one input is counted."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_rm)
    long_q = _long_question(tok)
    src = _source(gpt2_rm)
    assert src.max_len == 512
    batch = RewardInput(
        [long_q + RESPONSE, "say the word horse." + RESPONSE], [long_q, "say the word horse."],
        [RESPONSE] * 2, [None] * 2, [long_q, "say the word horse."],
    )  # fmt: skip
    scores = src(batch)
    full = tok(long_q + RESPONSE)["input_ids"]
    assert len(full) > 2000
    kept = full[:1] + full[-511:]
    assert tok.decode(kept).endswith(RESPONSE)
    assert float(scores[0]) == pytest.approx(_hf(gpt2_rm, kept), abs=1e-5)
    assert float(scores[1]) == pytest.approx(_hf(gpt2_rm, tok(batch.queries[1])["input_ids"]), abs=1e-5)
    assert src.truncated_count == 1


def test_a_trained_reward_model_keeps_the_answer_and_its_eos(toy_rm):
    """The toy reward model (training format bos + template(q) + r + eos; Llama, 512 positions):
    a 2,000-token question is cut after bos, the response and eos stay."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_rm)
    long_q = _long_question(tok)
    src = _source(toy_rm)
    (ids,) = src.encode(RewardInput([long_q + RESPONSE], [long_q], [RESPONSE], [None], [long_q]))
    answer = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    assert len(ids) == 512 and ids[0] == tok.bos_token_id
    assert ids[-len(answer) - 1 :] == [*answer, tok.eos_token_id]
    assert src.truncated_count == 1


def test_serve_rm_scores_a_2000_token_query_and_reports_the_cut(gpt2_rm):
    """``serve-rm`` (a real server on 127.0.0.1): a batch holding one 2,000-token query is answered
    200 with the in-process scores, and ``extra_logs.truncated`` (summed by the client into its
    ``truncated_count``) counts the one cut text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_rm)
    long_q = _long_question(tok)
    batch = RewardInput(
        [long_q + RESPONSE, "hi" + RESPONSE], [long_q, "hi"], [RESPONSE] * 2, [None] * 2, [long_q, "hi"]
    )
    server = ServeRm(gpt2_rm)
    try:
        client = HTTPRewardSource([server.url], timeout=60, retries=0)
        got = client(batch)
    finally:
        server.close()
    torch.testing.assert_close(got, _source(gpt2_rm)(batch), atol=1e-5, rtol=0)
    assert client.truncated_count == 1


@pytest.mark.slow
def test_rl_and_eval_tail_count_the_cut_inputs(toy, gpt2_rm, tmp_path):
    """``repulse rl`` (1 step, 2 prompts x 2 samples) and ``repulse eval-tail`` (the same prompts, 2
    samples each) with the 512-position reward model and one 2,000-token prompt: both finish; RL
    logs ``reward_truncated`` 2 (the long prompt's two samples) and eval-tail's summary says 2."""
    from transformers import AutoTokenizer

    from repulse.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))
    from test_rl import rl_cfg, run_rl

    tok = AutoTokenizer.from_pretrained(gpt2_rm)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"input": _long_question(tok)}) + "\n" + json.dumps({"input": "say hi"}) + "\n"
    )
    cfg = rl_cfg(
        toy, tmp_path / "rl", reward__remote_url=None, reward__model_name_or_path=str(gpt2_rm),
        train__max_steps=1, algo__advantage__estimator="rloo",
    )  # fmt: skip
    cfg.data.prompt_dataset = str(prompts)
    cfg.data.max_len = 4096
    cfg.rollout.batch_size, cfg.rollout.n_samples_per_prompt, cfg.rollout.micro_batch_size = 2, 2, 4
    cfg.rollout.max_new_tokens = 4
    cfg.train.batch_size = cfg.train.micro_batch_size = 4
    (row,) = run_rl(cfg)
    assert row["reward_truncated"] == 2
    out = tmp_path / "tail"
    argv = [
        "--tail.policy", str(toy.llama), "--data.prompt_dataset", str(prompts), "--data.max_len", "4096",
        "--reward.model_name_or_path", str(gpt2_rm), "--rollout.n_samples_per_prompt", "2",
        "--rollout.max_new_tokens", "4", "--ckpt.output_dir", str(out),
    ]  # fmt: skip
    assert main(["eval-tail", *argv]) == 0
    assert json.loads((out / "tail_summary.json").read_text())["reward_truncated"] == 2
