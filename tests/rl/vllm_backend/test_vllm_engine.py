"""The vLLM rollout backend against the hf backend on the same toy checkpoint (fp32).

Greedy: the same tokens and per-token log-probs within 1e-5, and the same ``Samples`` field by
field (EOS is a token the greedy rows reach at different points, so the masks, padding and
truncation flags are exercised). Sampling with temperature / top-k / top-p: the log-probs vLLM
reports for its own samples equal the sampler density recomputed from a forward of the policy.
One engine serves the module (start-up is the slow part).
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch

from repulse.rl.rollout import HFRolloutEngine, SamplingParams
from repulse.rl.rollout.vllm import vllm_installed

if not vllm_installed():
    pytest.skip("needs vLLM (make test-vllm runs these in .venv-vllm)", allow_module_level=True)

pytestmark = pytest.mark.vllm

# ragged prompts (left padding differs per row)
PROMPTS = [[0, 40, 41, 42, 43, 44], [0, 50], [0, 60, 61, 62], [0, 70, 71, 72, 73, 74, 75, 76, 77]]
PAD = 2


def load_policy(toy) -> torch.nn.Module:
    from repulse.models.loading import disable_dropout, load_causal_lm

    return disable_dropout(load_causal_lm(str(toy.llama), trainable=False))


def hf_engine(model, eos):
    return HFRolloutEngine(
        lambda: model, eos_id=eos, pad_id=PAD, micro_batch_size=64, device=torch.device("cpu")
    )


@pytest.fixture(scope="module")
def setup(toy):
    from repulse import errors
    from repulse.rl.rollout.vllm import VLLMRolloutEngine

    policy = load_policy(toy)
    # EOS: the 4th greedy token of the first prompt, so rows end at different points (or never)
    free = hf_engine(policy, None).generate(PROMPTS, 1, SamplingParams(max_new_tokens=12, temperature=0.0))
    eos = int(free.response[0, 3])
    errors._warned.difference_update({"vllm.enable_sleep", "vllm.gpu_memory_utilization"})
    notices = io.StringIO()
    process = {
        "threads": torch.get_num_threads(),
        "rng": torch.random.get_rng_state(),
        "fn": torch.set_num_threads,
    }
    with contextlib.redirect_stderr(notices):
        engine = VLLMRolloutEngine(
            toy.llama, eos_id=eos, pad_id=PAD, dtype=torch.float32, seed=0, enforce_eager=True,
            enable_prefix_caching=True, max_num_seqs=24, enable_sleep=True, gpu_memory_utilization=0.5,
        )  # fmt: skip
    process["after"] = {
        "threads": torch.get_num_threads(), "rng": torch.random.get_rng_state(), "fn": torch.set_num_threads
    }  # fmt: skip
    yield engine, policy, eos, notices.getvalue(), process
    engine.close()


def test_flags_reach_the_engine(setup):
    engine, _, _, notices, _ = setup
    cfg = engine._llm.llm_engine.vllm_config
    assert cfg.cache_config.enable_prefix_caching is True
    assert cfg.scheduler_config.max_num_seqs == 24
    assert cfg.model_config.enforce_eager is True
    assert cfg.model_config.dtype == torch.float32
    assert cfg.model_config.logprobs_mode == "processed_logprobs"
    assert cfg.parallel_config.tensor_parallel_size == 1
    # on CPU, sleep mode and the memory fraction do nothing: one line each says so
    assert "--vllm.enable_sleep has no effect on CPU" in notices
    assert "--vllm.gpu_memory_utilization has no effect on CPU" in notices


def test_building_the_engine_leaves_the_trainer_process_as_it_was(setup):
    """vLLM reseeds the global RNGs and disables ``torch.set_num_threads`` in its process."""
    *_, process = setup
    after = process["after"]
    assert after["threads"] == process["threads"] and after["fn"] is process["fn"]
    assert torch.equal(after["rng"], process["rng"])


def test_greedy_equals_hf_field_by_field(setup):
    engine, policy, eos, _, _ = setup
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    ours, ref = engine.generate(PROMPTS, 2, greedy), hf_engine(policy, eos).generate(PROMPTS, 2, greedy)
    assert ours.prompt_len == ref.prompt_len
    for field in ("sequences", "attention_mask", "action_mask", "prompt_index", "truncated", "versions"):
        assert torch.equal(getattr(ours, field), getattr(ref, field)), field
    torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    # the data exercise the layout: some rows stop at EOS (kept as an action), some run out
    assert ours.truncated.any() and not ours.truncated.all()
    ended = ~ours.truncated
    last = ours.action_mask.sum(-1) - 1
    assert (ours.response[ended, last[ended]] == eos).all()
    assert (ours.response[ours.action_mask == 0] == PAD).all() and (
        ours.logprobs[ours.action_mask == 0] == 0
    ).all()
    assert ours.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def density(logits: torch.Tensor, tokens: torch.Tensor, t: float, top_k: int, top_p: float) -> torch.Tensor:
    """log q(token): softmax(logits / t), cut to the top-k, renormalised, cut to the smallest prefix
    of mass >= top_p, renormalised (the formula of ``sample_next``'s docstring)."""
    logp = torch.log_softmax(logits.float() / t, -1)
    if top_k > 0:
        kth = torch.topk(logp, top_k, -1).values[..., -1:]
        logp = torch.log_softmax(logp.masked_fill(logp < kth, -math.inf), -1)
    if top_p < 1:
        sorted_lp, order = torch.sort(logp, -1, descending=True)
        probs = sorted_lp.exp()
        drop = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, order, probs.cumsum(-1) - probs >= top_p)
        logp = torch.log_softmax(logp.masked_fill(drop, -math.inf), -1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize(
    "t,top_k,top_p",
    [(0.7, 0, 1.0), (0.8, 5, 1.0), (1.0, 0, 0.7), (0.9, 20, 0.8)],
    ids=["t", "t-k", "t-p", "t-k-p"],
)
def test_sampled_logprobs_are_the_sampler_density(setup, t, top_k, top_p):
    engine, policy, _, _, _ = setup
    s = engine.generate(
        PROMPTS, 3, SamplingParams(max_new_tokens=10, temperature=t, top_k=top_k, top_p=top_p)
    )
    positions = (s.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = policy(input_ids=s.sequences, attention_mask=s.attention_mask, position_ids=positions).logits
    expected = density(logits[:, s.prompt_len - 1 : -1], s.response, t, top_k, top_p)
    act = s.action_mask.bool()
    assert torch.isfinite(expected[act]).all()  # every sampled token lies in the kept set
    torch.testing.assert_close(s.logprobs[act], expected[act], atol=1e-5, rtol=0)
    assert s.prompt_index.tolist() == [i for i in range(len(PROMPTS)) for _ in range(3)]
    assert len({tuple(r.tolist()) for r in s.response[:3]}) > 1  # a prompt's samples differ


def test_a_seed_makes_a_call_reproducible(setup):
    engine, *_ = setup
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=123)
    a, b = engine.generate(PROMPTS, 2, params), engine.generate(PROMPTS, 2, params)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.logprobs, b.logprobs)
    c = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=124))
    d = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0))
    e = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0))
    assert not torch.equal(a.sequences, c.sequences) and not torch.equal(d.sequences, e.sequences)
    # prompts do not share a noise stream: the same prompt twice in one call gets other samples
    twice = engine.generate([PROMPTS[0], PROMPTS[0]], 1, params)
    assert not torch.equal(twice.response[0], twice.response[1])
