"""``repulse generate --rollout.backend vllm``: the same greedy responses as the hf backend, and the
vLLM options (prefix caching, batch size, tensor parallelism) reach the engine. Runs where vLLM is
installed (the .venv-vllm environment, ``make test-vllm``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from repulse.config.sections import GenerateConfig  # noqa: E402
from repulse.workflows import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "User: {}\nAssistant: "


def _cfg(model, prompts, out: Path, backend: str) -> GenerateConfig:
    cfg = GenerateConfig()
    cfg.model.model_name_or_path = str(model)
    cfg.data.dataset = str(prompts)
    cfg.data.input_template = TEMPLATE
    cfg.data.rollout_batch_size = 24
    cfg.rollout.backend = backend
    cfg.rollout.greedy = True
    cfg.rollout.max_new_tokens = 16
    cfg.rollout.micro_batch_size = 8
    cfg.output.path = str(out)
    return cfg


@pytest.fixture(scope="module")
def hf_greedy(toy, tmp_path_factory) -> Path:
    """The toy Llama's greedy answers (its random weights answer each prompt differently; no SFT
    first, which would double this module's time)."""
    out = tmp_path_factory.mktemp("hf") / "greedy.jsonl"
    generate.run(_cfg(toy.llama, toy.sft_eval, out, "hf"))
    return out


def test_hf_and_vllm_give_the_same_greedy_responses(toy, hf_greedy, tmp_path):
    cfg = _cfg(toy.llama, toy.sft_eval, tmp_path / "vllm.jsonl", "vllm")
    cfg.vllm.enable_prefix_caching = True
    generate.run(cfg)
    assert (tmp_path / "vllm.jsonl").read_bytes() == hf_greedy.read_bytes()
    rows = [json.loads(line) for line in hf_greedy.read_text().splitlines()]
    assert len(rows) == 24 and len({r["output"] for r in rows}) > 12  # mostly distinct answers


def test_the_vllm_options_reach_the_engine(toy):
    from repulse.config.sections import GenerationSection, InferEngineSection, InferVllmSection
    from repulse.models.loading import load_tokenizer
    from repulse.workflows.inference import build_rollout_engine

    tok = load_tokenizer(str(toy.llama), padding_side="left")
    engine = build_rollout_engine(
        str(toy.llama), tok, GenerationSection(backend="vllm"), InferEngineSection(),
        InferVllmSection(enable_prefix_caching=True, max_num_seqs=5), torch.device("cpu"),
    )  # fmt: skip
    config = engine._llm.llm_engine.vllm_config
    assert config.cache_config.enable_prefix_caching is True
    assert config.scheduler_config.max_num_seqs == 5
    assert config.parallel_config.tensor_parallel_size == 1


@pytest.mark.distributed
def test_tensor_parallel_generation_under_torchrun(toy, hf_greedy, tmp_path):
    """Two ranks, one vLLM engine with tensor parallelism 2: the hf backend's greedy file."""
    out = tmp_path / "tp.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
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
        "generate", "--pretrain", str(toy.llama), "--dataset", str(toy.sft_eval), "--input_template", TEMPLATE,
        "--rollout_batch_size", "24", "--greedy_sampling", "--max_new_tokens", "16", "--micro_batch_size", "8",
        "--eval_task", "generate_vllm", "--tp_size", "2", "--output_path", str(out),
    ]  # fmt: skip
    proc = subprocess.run([*cmd, *argv], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.read_bytes() == hf_greedy.read_bytes()
