"""One reward format, end to end: a reward model trained by ``repulse rm`` records the input format it
was trained on, and every consumer scores exactly that format.

The toy reward model (``toy_rm``: ``--data.prompt_key prompt``, ``--data.input_template
'User: {}\\nAssistant: '``) was trained on ``[bos] + template(question) + response + [eos]`` with
question and response tokenised separately. The reference score of a (question, response) is
``AutoModelForSequenceClassification`` on exactly those ids, built here by hand; the same number
must come out of the rm trainer's own forward on its training batches, RL scoring, ``repulse
eval-tail``, ``repulse gcg``'s scorer and ``repulse serve-rm`` over HTTP (fp32; only padding and
batch shapes differ: 1e-5).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from repulse.rl.reward_http import HTTPRewardSource
from repulse.rl.rewards import RewardInput, RewardModelSource

TEMPLATE = "User: {}\nAssistant: "


def _rows(toy, n: int = 6) -> list[dict]:
    return [json.loads(line) for line in Path(toy.pairs).read_text().splitlines()[:n]]


def _pairs(toy) -> list[tuple[str, str]]:
    """(question, response) of the toy preference pairs: chosen ones first, then rejected."""
    rows = _rows(toy)
    return [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]


def training_ids(tok, question: str, response: str) -> list[int]:
    """The training format by hand: bos, the templated question, the response, eos."""
    q = tok(TEMPLATE.format(question), add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    return [tok.bos_token_id, *q, *r, tok.eos_token_id]


@torch.no_grad()
def hf_scores(rm: Path, id_lists: list[list[int]]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    return torch.tensor([float(model(input_ids=torch.tensor([ids])).logits[0, 0]) for ids in id_lists])


def rl_input(toy, tok, pairs: list[tuple[str, str]]) -> RewardInput:
    """The reward input as RL builds it: the policy's prompts rendered by ``PromptDataset`` with the
    same template, the raw questions beside them."""
    from repulse.config.sections import RLConfig
    from repulse.data.prompts import PromptDataset

    cfg = RLConfig()
    cfg.data.input_template = TEMPLATE
    items = PromptDataset([{"input": q} for q, _ in pairs], tok, cfg.data)
    prompts = [it["prompt"] for it in items]
    responses = [r for _, r in pairs]
    questions = [it["question"] for it in items]
    return RewardInput(
        [p + r for p, r in zip(prompts, responses)], prompts, responses, [None] * len(pairs), questions
    )


def _source(rm: Path, fmt: str = "auto", micro: int = 4) -> RewardModelSource:
    return RewardModelSource(
        str(rm), torch.device("cpu"), max_len=2048, input_format=fmt, chosen_label=None,
        offload=False, micro_batch_size=micro,
    )  # fmt: skip


class ServeRm:
    """``repulse serve-rm``'s server (``make_server``) on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, rm: Path, max_len: int = 2048, **limits):
        from repulse.rl.reward_server import RewardScorer, make_server

        self.scorer = RewardScorer(str(rm), max_len, 5, False)
        self.server = make_server(self.scorer, "127.0.0.1", 0, **limits)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/get_reward"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_rm_records_its_training_format_in_the_saved_config(toy_rm):
    config = json.loads((Path(toy_rm) / "config.json").read_text())
    assert config["repulse_reward_format"] == {
        "version": 1,
        "kind": "prompt_response",
        "input_template": TEMPLATE,
        "chat_template": None,
        "eos": True,
    }


@pytest.mark.slow
def test_the_same_pair_gets_the_same_score_in_training_rl_serve_rm_and_transformers(toy, toy_rm):
    """12 (question, response) pairs (6 toy preference pairs' chosen and rejected answers):

    - the rm trainer's own forward (``RewardModelMethod.scores``) on ``PreferenceDataset`` batches,
    - RL scoring (``RewardModelSource`` on the input ``PromptDataset`` renders, micro-batches of 4),
    - ``repulse serve-rm`` over HTTP (micro-batches of 5, the RL client's request),
    - ``AutoModelForSequenceClassification`` on the hand-built training ids, one at a time,

    agree within 1e-5. The old scoring (``concat``: the tokenizer's specials, no eos) gives other
    numbers (by more than 0.1 on some pair): the format is what the test is about."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from repulse.config.sections import OfflineConfig
    from repulse.data.preference import PreferenceDataset
    from repulse.trainers.dpo import pair_collate
    from repulse.trainers.rm import RewardModelMethod

    tok = AutoTokenizer.from_pretrained(toy_rm)
    pairs = _pairs(toy)
    expected = hf_scores(toy_rm, [training_ids(tok, q, r) for q, r in pairs])
    assert float(expected.std()) > 0.1  # the scores differ: a shuffled batch would be caught

    cfg = OfflineConfig()
    cfg.data.prompt_key = "prompt"
    cfg.data.input_template = TEMPLATE
    cfg.data.max_len = 64
    dataset = PreferenceDataset(_rows(toy), tok, cfg.data)
    model = AutoModelForSequenceClassification.from_pretrained(toy_rm).eval()
    method = RewardModelMethod(
        SimpleNamespace(module=model, device=torch.device("cpu")), "sigmoid", False, torch.float32
    )
    with torch.no_grad():
        trained = method.scores(
            pair_collate(cfg, tok.pad_token_id)([dataset[i] for i in range(len(dataset))])
        )
    torch.testing.assert_close(trained.cpu(), expected, atol=1e-5, rtol=0)

    batch = rl_input(toy, tok, pairs)
    in_rl = _source(toy_rm)(batch)
    torch.testing.assert_close(in_rl, expected, atol=1e-5, rtol=0)

    server = ServeRm(toy_rm)
    try:
        remote = HTTPRewardSource([server.url], timeout=60, retries=0)(batch)
    finally:
        server.close()
    torch.testing.assert_close(remote, expected, atol=1e-5, rtol=0)

    concat = _source(toy_rm, "concat")(batch)
    assert float((concat - expected).abs().max()) > 0.1, (concat, expected)


@pytest.mark.slow
def test_rl_and_eval_tail_runs_score_every_sample_in_the_training_format(toy, toy_rm, tmp_path):
    """End to end: ``repulse rl`` (1 RLOO step of 8 prompts x 4 samples, every sample written out by
    ``--repulse.save_negdata`` with an infinite threshold) and ``repulse eval-tail`` (8 prompts x 4
    samples of the toy Llama) on the toy reward model: each sample's recorded reward equals
    transformers' score of its question and response in the training format (1e-5)."""
    from transformers import AutoTokenizer

    from repulse.cli import main

    sys_path = Path(__file__).resolve().parents[1] / "trainers"
    import sys

    sys.path.insert(0, str(sys_path))
    from test_rl import rm_cfg, run_rl

    tok = AutoTokenizer.from_pretrained(toy_rm)
    prompts = [json.loads(line) for line in Path(toy.prompts).read_text().splitlines()[:8]]
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    question_of = {TEMPLATE.format(p["input"]): p["input"] for p in prompts}

    dump = tmp_path / "rl_samples.jsonl"
    cfg = rm_cfg(
        toy, toy_rm, tmp_path / "rl", algo__advantage__estimator="rloo", train__max_steps=1,
        repulse__save_negdata=str(dump), repulse__negdata_threshold=1e9,
    )  # fmt: skip
    cfg.data.prompt_dataset = str(prompts_file)
    run_rl(cfg)
    tail = tmp_path / "tail"
    argv = [
        "--tail.policy", str(toy.llama), "--data.prompt_dataset", str(prompts_file), "--data.input_template",
        TEMPLATE, "--reward.model_name_or_path", str(toy_rm), "--rollout.n_samples_per_prompt", "4",
        "--rollout.max_new_tokens", "8", "--ckpt.output_dir", str(tail), "--tail.eta", "0.0",
    ]  # fmt: skip
    assert main(["eval-tail", *argv]) == 0
    for file in (dump, tail / "samples.jsonl"):
        rows = [json.loads(line) for line in file.read_text().splitlines()]
        assert len(rows) >= 8, file
        ids = [training_ids(tok, question_of[r["prompt"]], r["response"]) for r in rows]
        expected = hf_scores(toy_rm, ids)
        got = torch.tensor([r["reward"] for r in rows])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=str(file))


def test_an_external_reward_model_keeps_its_tokenizers_conventions(toy, tmp_path):
    """A sequence classifier saved by transformers alone (no recorded format) is scored, under the
    default ``auto``, on the tokenizer's own encoding of prompt + response: bos added by the
    tokenizer, no eos appended."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(toy.llama, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    tok = AutoTokenizer.from_pretrained(toy.llama)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(tmp_path / "ext")
    tok.save_pretrained(tmp_path / "ext")
    batch = rl_input(
        toy, tok, [("say the word lime.", "lime. thank you."), ("what comes after two?", "three.")]
    )
    got = _source(tmp_path / "ext")(batch)
    expected = hf_scores(tmp_path / "ext", [tok(q)["input_ids"] for q in batch.queries])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert tok(batch.queries[0])["input_ids"][-1] != tok.eos_token_id


def test_an_explicit_other_format_on_a_trained_model_warns_by_name(toy_rm, capsys):
    src = _source(toy_rm, "pair")
    assert src.input_format == "pair"
    err = capsys.readouterr().err
    assert "--reward.input_format pair" in err and "was trained by repulse rm" in err, err
