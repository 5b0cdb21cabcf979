"""``repulse generate``: slices, rows, one-pass best-of-n, resume after SIGKILL, two processes, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repulse.cli import main as cli
from repulse.config.sections import GenerateConfig
from repulse.workflows import generate
from repulse.workflows.chunks import ChunkStore

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "User: {}\nAssistant: "


def _cfg(toy, out: Path, **rollout) -> GenerateConfig:
    cfg = GenerateConfig()
    cfg.model.model_name_or_path = str(toy.llama)
    cfg.data.dataset = str(toy.prompts)
    cfg.data.input_template = TEMPLATE
    cfg.rollout.max_new_tokens = 6
    cfg.rollout.temperature = 1.0
    for k, v in rollout.items():
        setattr(cfg.rollout, k, v)
    cfg.output.path = str(out)
    return cfg


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _error(capsys, argv: list[str]) -> str:
    """Run ``repulse <argv>``; it must fail with exit status 2 and one paragraph, no traceback."""
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    paragraphs = [p for p in err.split("\n") if p.startswith("error: ")]
    assert len(paragraphs) == 1, err
    return " ".join(err[err.index("error: ") :].split())


def test_slice_rows_and_keys(toy, tmp_path):
    """--data.iter 1 with --data.rollout_batch_size 5 is prompts 5..9; each gives n rows in prompt order,
    with the rendered prompt as input and the prompt row's other keys."""
    cfg = _cfg(toy, tmp_path / "gen.jsonl", n_samples_per_prompt=3, micro_batch_size=4)
    cfg.data.iter, cfg.data.rollout_batch_size = 1, 5
    generate.run(cfg)
    prompts = _rows(toy.prompts)[5:10]
    rows = _rows(tmp_path / "gen.jsonl")
    assert [r["input"] for r in rows] == [TEMPLATE.format(p["input"]) for p in prompts for _ in range(3)]
    assert [r["label"] for r in rows] == [p["label"] for p in prompts for _ in range(3)]
    assert all(set(r) == {"input", "output", "label"} and isinstance(r["output"], str) for r in rows)
    assert not (tmp_path / "gen.jsonl.parts").exists()


def test_best_of_n_in_one_pass_equals_generate_then_score(toy, toy_rm, tmp_path):
    """Generation scored in the same pass with --score.post_processor rs keeps, per prompt, the best of the
    very samples a plain run draws (same seeds), with the reward the score command gives them."""
    from repulse.config.sections import ScoreConfig
    from repulse.workflows import score

    cfg = _cfg(toy, tmp_path / "all.jsonl", n_samples_per_prompt=4, micro_batch_size=8)
    cfg.data.rollout_batch_size = 6
    generate.run(cfg)
    cfg.output.path = str(tmp_path / "best.jsonl")
    cfg.reward.model_name_or_path = str(toy_rm)
    cfg.score.post_processor = "rs"
    generate.run(cfg)
    scfg = ScoreConfig()
    scfg.data.dataset = str(tmp_path / "all.jsonl")
    scfg.reward.model_name_or_path = str(toy_rm)
    scfg.output.path = str(tmp_path / "scored.jsonl")
    score.run(scfg)
    scored = _rows(tmp_path / "scored.jsonl")
    best = _rows(tmp_path / "best.jsonl")
    assert len(best) == 6
    for row in best:
        group = [r for r in scored if r["input"] == row["input"]]
        assert len(group) == 4
        top = max(group, key=lambda r: r["reward"])
        assert row["output"] == top["output"]
        assert row["reward"] == pytest.approx(top["reward"], abs=1e-5)


def test_chunks_are_shared_round_robin_and_padded(tmp_path):
    stores = [ChunkStore(tmp_path / "o.jsonl", "k", 7, rank, 3, "--output.path") for rank in range(3)]
    pending = [0, 2, 3, 5, 6]
    shares = [s.mine(pending) for s in stores]
    assert shares == [[0, 5], [2, 6], [3, None]]
    assert sorted(k for share in shares for k in share if k is not None) == pending


@pytest.mark.slow
def test_a_killed_generate_continues_without_gaps_or_duplicates(toy, tmp_path):
    """SIGKILL after a few chunks, run again: the file is byte for byte the uninterrupted run's."""
    cfg = _cfg(toy, tmp_path / "whole.jsonl", n_samples_per_prompt=2, micro_batch_size=2, max_new_tokens=24)
    cfg.data.rollout_batch_size = 40
    generate.run(cfg)
    out = tmp_path / "killed.jsonl"
    argv = [
        "generate", "--model.model_name_or_path", str(toy.llama), "--data.dataset", str(toy.prompts),
        "--data.input_template", TEMPLATE, "--data.rollout_batch_size", "40", "--rollout.n_samples_per_prompt", "2",
        "--rollout.micro_batch_size", "2", "--rollout.max_new_tokens", "24", "--output.path", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(torch.get_num_threads()))
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "repulse", *argv], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    parts = tmp_path / "killed.jsonl.parts"
    deadline = time.monotonic() + 300
    while len(list(parts.glob("chunk_*.jsonl"))) < 3:
        assert proc.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists() and len(list(parts.glob("chunk_*.jsonl"))) < 40
    rerun = subprocess.run(
        [sys.executable, "-m", "repulse", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "chunks are done" in rerun.stdout
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert len(_rows(out)) == 80


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_write_one_file_with_every_prompt_times_n_once(toy, tmp_path):
    """torchrun with 2 ranks: one file, every prompt x n exactly once - the one-process file itself."""
    cfg = _cfg(toy, tmp_path / "one.jsonl", n_samples_per_prompt=3, micro_batch_size=6, max_new_tokens=12)
    cfg.data.rollout_batch_size = 20
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: the same kernels, so the same samples
    try:
        generate.run(cfg)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "repulse",
    ]
    argv = [
        "generate", "--model.model_name_or_path", str(toy.llama), "--data.dataset", str(toy.prompts),
        "--data.input_template", TEMPLATE, "--data.rollout_batch_size", "20", "--rollout.n_samples_per_prompt", "3",
        "--rollout.micro_batch_size", "6", "--rollout.max_new_tokens", "12", "--output.path", str(tmp_path / "two.jsonl"),
    ]  # fmt: skip
    proc = subprocess.run([*cmd, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = _rows(tmp_path / "two.jsonl")
    prompts = [TEMPLATE.format(p["input"]) for p in _rows(toy.prompts)[:20]]
    assert [r["input"] for r in two] == [p for p in prompts for _ in range(3)]
    assert two == _rows(tmp_path / "one.jsonl")


# --------------------------------------------------------------------------- bad input


def test_an_empty_prompt_slice_is_one_paragraph(toy, tmp_path, capsys):
    msg = _error(capsys, [
        "generate", "--pretrain", str(toy.llama), "--dataset", str(toy.prompts), "--iter", "7",
        "--rollout_batch_size", "10", "--output_path", str(tmp_path / "o.jsonl"),
    ])  # fmt: skip
    assert "selects prompts [70, 80)" in msg and "has only 64 prompt(s)" in msg and "--data.iter 6" in msg


def test_iter_dpo_with_one_response_per_prompt_is_one_paragraph(toy, tmp_path, capsys):
    msg = _error(capsys, [
        "generate", "--pretrain", str(toy.llama), "--dataset", str(toy.prompts), "--best_of_n", "1",
        "--post_processor", "iter_dpo", "--reward_pretrain", str(toy.llama), "--output_path", str(tmp_path / "o.jsonl"),
    ])  # fmt: skip
    assert "iter_dpo" in msg and "--rollout.n_samples_per_prompt (seed: --best_of_n) is 1" in msg


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--vllm.enable_prefix_caching"], "read by the vllm backend only"),
        (["--score.post_processor", "rs"], "needs rewards"),
        (
            ["--reward.model_name_or_path", "x", "--reward.clip_range", "-1", "1"],
            "is not read by repulse generate",
        ),
        (["--score.reward_template", "{input}{reward}"], "csft only"),
        (["--data.iter", "2"], "needs --data.rollout_batch_size"),
        (["--rollout.top_p", "0"], "--rollout.top_p must be > 0 and <= 1"),
        (["--rollout.max_new_tokens", "600"], "positions"),
    ],
)
def test_flags_without_effect_or_out_of_range_are_refused(toy, tmp_path, capsys, flags, needle):
    base = [
        "generate",
        "--pretrain",
        str(toy.llama),
        "--dataset",
        str(toy.prompts),
        "--output_path",
        str(tmp_path / "o"),
    ]
    assert needle in _error(capsys, [*base, *flags])


def test_a_chat_rendered_output_trains_on_the_prompt_tokens_it_was_generated_from(toy, tmp_path):
    """SFT on a generate output (the rejection-sampling stage) sees each prompt's tokens exactly as the
    sampler did: one BOS, even though the chat-rendered input text starts with it."""
    from repulse.config.sections import DataSection
    from repulse.data.sft import SFTDataset
    from repulse.models.loading import load_tokenizer
    from repulse.workflows.generate import load_prompts

    cfg = _cfg(toy, tmp_path / "chat.jsonl", max_new_tokens=4)
    cfg.data.input_template, cfg.data.apply_chat_template, cfg.data.rollout_batch_size = None, True, 4
    generate.run(cfg)
    tok = load_tokenizer(str(toy.llama))
    sampled = [it["ids"] for it in load_prompts(cfg.data, tok)]
    rows = _rows(tmp_path / "chat.jsonl")
    assert rows[0]["input"].startswith(tok.bos_token)
    data = SFTDataset(rows, tok, DataSection(input_key="input", output_key="output", max_len=512))
    for item, ids in zip(data, sampled):
        assert item["input_ids"][: len(ids)] == ids and item["loss_mask"][len(ids) - 1] == 0
