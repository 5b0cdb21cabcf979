"""Weight sync into the vLLM backend: perturb the policy, the engine is stale, sync, it matches.

Three paths: in this process (``LocalWeightSync`` → ``collective_rpc`` → layer-wise reload),
from this process to an engine in another process over a gloo group (``GroupWeightSender`` /
``GroupWeightReceiver``, bf16), and colocated under ``torchrun`` (``external_launcher``: every
rank holds an engine — or, with tensor parallelism 2, a shard of one — and rank 0 alone the
gathered weights). "Matches": the engine's greedy tokens
and log-probs equal the policy's (fp32, within 1e-5), the tensors vLLM keeps in checkpoint
layout are bitwise the policy's, and ``weight_version`` is the step.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from repulse.rl.rollout.vllm import vllm_installed

if not vllm_installed():
    pytest.skip("needs vLLM (make test-vllm runs these in .venv-vllm)", allow_module_level=True)

import weight_sync_peer as peer  # noqa: E402  (after the skip: the peer is for these tests)
from test_weight_sync import assert_bitwise, finish, free_address, peer_env, start_peer, wait_ready  # noqa: E402

from repulse.rl.weight_sync import (  # noqa: E402
    GroupWeightReceiver,
    GroupWeightSender,
    LocalWeightSync,
    SyncOptions,
    WeightSyncError,
)

pytestmark = pytest.mark.vllm

PROMPTS = [*peer.PROMPTS, peer.LONG_PROMPT]


def truth(policy) -> dict:
    return peer.greedy(peer.hf_engine(policy, owns=False), PROMPTS)


def policy_tensors(policy, names) -> dict:
    state = policy.state_dict()
    return {n: state[n] for n in names}


@pytest.fixture(scope="module")
def engine(toy):
    engine = peer.vllm_engine(str(toy.llama), torch.float32, enable_prefix_caching=True)
    yield engine
    engine.close()


def test_in_process_sync(toy, engine):
    policy = peer.load_model(str(toy.llama), torch.float32)
    stale = peer.greedy(engine, PROMPTS)  # also fills the prefix cache with the old weights' keys
    peer.perturb(policy)
    want = truth(policy)
    assert not torch.equal(stale["sequences"], want["sequences"])
    stats = LocalWeightSync(engine, SyncOptions(bucket_mb=0.05)).push(policy.state_dict(), version=3)
    assert stats.buckets > 5  # layers arrive split across buckets
    now = peer.greedy(engine, PROMPTS)
    assert torch.equal(now["sequences"], want["sequences"])
    torch.testing.assert_close(now["logprobs"], want["logprobs"], atol=1e-5, rtol=0)
    assert engine.weight_version == 3 and now["versions"].tolist() == [3] * len(PROMPTS)
    kept = peer.vllm_checkpoint_tensors(engine, policy.config.vocab_size)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= kept.keys()
    assert_bitwise(kept, policy_tensors(policy, kept))


def test_an_incomplete_update_is_refused(toy, engine):
    policy = peer.load_model(str(toy.llama), torch.float32)
    version = engine.weight_version
    drop_norms = SyncOptions(name_map=lambda n: None if "norm" in n else n)
    with pytest.raises(RuntimeError, match="weight update incomplete"):
        LocalWeightSync(engine, drop_norms).push(policy.state_dict(), version=version + 1)
    assert engine.weight_version == version
    with pytest.raises(RuntimeError, match="incomplete weight update"):  # no sampling from the mix
        peer.greedy(engine, PROMPTS)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_sender_that_dies_mid_sync_raises_and_the_engine_recovers(toy, engine, tmp_path):
    """The trainer dies after one bucket: the vLLM engine's receiver raises within the timeout, the
    engine keeps its version and refuses to sample, and the next complete update makes it current."""
    address, timeout = free_address(), 8.0
    proc = start_peer("sender", toy, tmp_path, "--address", address, "--timeout", str(timeout))
    version = engine.weight_version
    try:
        wait_ready(proc, tmp_path / "ready")
        rx = GroupWeightReceiver(engine, address, 1, 2, SyncOptions(timeout_s=timeout))
        started = time.monotonic()
        with pytest.raises(WeightSyncError, match=r"rank 0\).*did not complete"):
            rx.receive(wait_s=timeout)
        elapsed = time.monotonic() - started
    finally:
        finish(proc)
    assert (tmp_path / "fault").read_text() == "dying"
    assert elapsed < timeout + 5
    assert engine.weight_version == version
    with pytest.raises(RuntimeError, match="incomplete weight update"):
        peer.greedy(engine, PROMPTS)
    policy = peer.load_model(str(toy.llama), torch.float32)
    peer.perturb(policy, seed=2)
    LocalWeightSync(engine).push(policy.state_dict(), version=version + 1)
    now, want = peer.greedy(engine, PROMPTS), truth(policy)
    assert torch.equal(now["sequences"], want["sequences"]) and engine.weight_version == version + 1
    torch.testing.assert_close(now["logprobs"], want["logprobs"], atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_to_an_engine_in_another_process_bf16(toy, tmp_path):
    address = free_address()
    proc = start_peer(
        "receiver", toy, tmp_path, "--address", address, "--backend", "vllm", "--dtype", "bfloat16"
    )
    policy = peer.load_model(str(toy.llama), torch.bfloat16)
    peer.perturb(policy)
    try:
        wait_ready(proc, tmp_path / "before.pt")
        tx = GroupWeightSender(address, 2, SyncOptions(bucket_mb=0.1, timeout_s=120))
        tx.push(policy.state_dict(), version=7)
        tx.close()
    finally:
        log = finish(proc, timeout=300)
    assert proc.returncode == 0, log[-4000:]
    before, after = torch.load(tmp_path / "before.pt"), torch.load(tmp_path / "after_7.pt")
    assert after["weight_version"] == 7 and after["versions"].tolist() == [7] * len(peer.PROMPTS)
    assert_bitwise(after["state"], policy_tensors(policy, after["state"]))

    # bf16 kernels differ between vLLM and HF, so "matches" is within bf16 rounding: the policy's
    # own log-probs of the engine's greedy tokens, against the stale engine's gap
    def gap(result):
        s = result["sequences"]
        with torch.no_grad():
            mask = result["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = policy(input_ids=s, attention_mask=mask, position_ids=positions).logits.float()
        width = s.shape[1] - peer.GREEDY_TOKENS
        lp = torch.log_softmax(logits[:, width - 1 : -1], -1).gather(-1, s[:, width:, None]).squeeze(-1)
        act = mask[:, width:].bool()
        return (lp - result["logprobs"])[act].abs().max().item()

    assert gap(after) < 0.05 < 0.2 < gap(before)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("tp", [1, 2])
def test_colocated_engines_under_torchrun(toy, tmp_path, tp):
    """tp 1: an engine per rank, each with its own prompts and sampling stream; tp 2: one engine
    over both ranks (their prompts gathered, each rank gets its own rows back), each rank loading
    the full weights into its shard."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(peer.__file__),
    ]
    cmd += [
        "vllm-colocated",
        "--model",
        str(toy.llama),
        "--out",
        str(tmp_path),
        "--timeout",
        "300",
        "--tp",
        str(tp),
    ]
    proc = subprocess.run(cmd, env=peer_env(), capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    policy = peer.load_model(str(toy.llama), torch.float32)
    peer.perturb(policy)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for result in results:
        want = peer.greedy(peer.hf_engine(policy, owns=False), result["prompts"])
        assert not torch.equal(result["before"]["sequences"], want["sequences"])
        assert torch.equal(result["after"]["sequences"], want["sequences"])
        torch.testing.assert_close(result["after"]["logprobs"], want["logprobs"], atol=1e-5, rtol=0)
        assert result["weight_version"] == 5 and result["buckets"] > 1
    # the same prompt on both ranks gets other samples (tp 1: two engines' own streams; tp 2:
    # two requests of one engine with their own seeds)
    assert not torch.equal(results[0]["sampled"], results[1]["sampled"])
