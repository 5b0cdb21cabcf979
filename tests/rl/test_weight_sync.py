"""Weight sync into rollout engines that hold their own copy of the policy (the hf backend here;
the vLLM backend in ``tests/rl/vllm_backend``).

Each path is shown the same way: perturb the policy, show the engine is stale (other greedy
tokens or log-probs), sync, show it matches the policy — tokens and log-probs equal, every
tensor bitwise equal (fp32 and bf16), ``weight_version`` equal to the step. The ``group``
transport runs between this process and a real second process over gloo; a peer killed or
frozen mid-sync raises a clear error within the timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import weight_sync_peer as peer

from repulse.rl.weight_sync import (
    GroupWeightReceiver,
    GroupWeightSender,
    LocalWeightSync,
    SyncOptions,
    WeightSyncError,
    bucketed,
    hf_name,
)

PEER = Path(peer.__file__)
ROOT = PEER.parents[2]


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def peer_env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(PEER.parent)]), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def start_peer(role: str, toy, out: Path, *extra: str, python: str = sys.executable) -> subprocess.Popen:
    cmd = [python, str(PEER), role, "--model", str(toy.llama), "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=peer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(proc: subprocess.Popen, marker: Path, timeout: float = 300) -> None:
    """Wait until the peer is about to join the group (it wrote ``marker``): its start-up
    (imports, model, engine) is not part of the timeouts under test."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"peer exited ({proc.returncode}) before joining:\n{proc.stdout.read()[-4000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"peer not ready within {timeout} s")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"peer did not finish within {timeout} s:\n{out[-4000:]}") from None
    return out


def one_thread_greedy(model: torch.nn.Module) -> dict:
    """The policy's greedy samples computed as the peer computes them (one thread: the same
    reduction order, so equal weights give bitwise-equal log-probs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return peer.greedy(peer.hf_engine(model, owns=False))
    finally:
        torch.set_num_threads(threads)


def assert_bitwise(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for k, v in reference.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k].view(torch.uint8), v.view(torch.uint8)), k


def test_buckets_by_hand():
    t = {
        n: torch.zeros(k) for n, k in [("a", 3), ("b", 2), ("c", 10), ("d", 1), ("e", 1)]
    }  # fp32: 4 bytes each
    groups = [[n for n, _ in b] for b in bucketed(t.items(), bucket_bytes=20)]
    # a+b = 20 bytes fill one bucket; c (40 bytes) is larger than a bucket: alone; d+e share one
    assert groups == [["a", "b"], ["c"], ["d", "e"]]
    assert [[n for n, _ in b] for b in bucketed(t.items(), bucket_bytes=1 << 20)] == [
        ["a", "b", "c", "d", "e"]
    ]


def test_default_name_map_strips_wrappers_only():
    assert hf_name("module.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_name("_orig_mod.lm_head.weight") == "lm_head.weight"
    assert hf_name("model.layers.1._fsdp_wrapped_module.self_attn.q_proj.weight") == (
        "model.layers.1.self_attn.q_proj.weight"
    )
    assert hf_name("model.embed_tokens.weight") == "model.embed_tokens.weight"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_local_sync_makes_a_stale_engine_current(toy, dtype):
    policy = peer.load_model(str(toy.llama), dtype)
    copy = peer.load_model(str(toy.llama), dtype)
    engine = peer.hf_engine(copy)
    peer.perturb(policy)
    truth = peer.greedy(peer.hf_engine(policy, owns=False))
    stale = peer.greedy(engine)
    assert not torch.equal(stale["sequences"], truth["sequences"])
    # small buckets: the update arrives in many loads, split inside layers
    stats = LocalWeightSync(engine, SyncOptions(bucket_mb=0.05)).push(policy.state_dict(), version=4)
    assert stats.buckets > 5 and stats.tensors == len(policy.state_dict())
    now = peer.greedy(engine)
    assert torch.equal(now["sequences"], truth["sequences"])
    assert torch.equal(now["logprobs"], truth["logprobs"])
    assert engine.weight_version == 4 and now["versions"].tolist() == [4, 4, 4]
    assert_bitwise(copy.state_dict(), policy.state_dict())


def test_lora_is_merged_before_sending(toy):
    """A LoRA policy reaches a plain engine as merged weights: the engine's logits equal the
    adapted policy's (the rollout state folds W + s·B·A under the base model's names)."""
    from peft import LoraConfig, get_peft_model

    from repulse.engine._common import merge_peft_state_dict

    policy = get_peft_model(
        peer.load_model(str(toy.llama), torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))
    copy = peer.load_model(str(toy.llama), torch.float32)
    ids = torch.tensor([peer.PROMPTS[0]])
    assert not torch.allclose(copy(ids).logits, policy(ids).logits, atol=1e-3)
    LocalWeightSync(peer.hf_engine(copy)).push(merge_peft_state_dict(policy, policy.state_dict()), version=1)
    torch.testing.assert_close(copy(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)


def test_an_incomplete_update_is_refused(toy):
    copy = peer.load_model(str(toy.llama), torch.float32)
    engine = peer.hf_engine(copy)
    drop_norms = SyncOptions(name_map=lambda n: None if "norm" in n else n)
    with pytest.raises(RuntimeError, match="weight update incomplete"):
        LocalWeightSync(engine, drop_norms).push(copy.state_dict(), version=1)
    assert engine.weight_version == 0
    # the engine holds the new tensors it got and the old norms: it refuses to sample that mix...
    with pytest.raises(RuntimeError, match="incomplete weight update on top of version 0"):
        peer.greedy(engine)
    # ...until a complete update arrives
    LocalWeightSync(engine).push(copy.state_dict(), version=2)
    assert engine.weight_version == 2 and peer.greedy(engine)["versions"].tolist() == [2, 2, 2]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_group_sync_to_an_engine_in_another_process(toy, tmp_path, dtype):
    address = free_address()
    proc = start_peer("receiver", toy, tmp_path, "--address", address, "--dtype", dtype)
    policy = peer.load_model(str(toy.llama), getattr(torch, dtype))
    peer.perturb(policy)
    truth = one_thread_greedy(policy)
    try:
        wait_ready(proc, tmp_path / "before.pt")
        tx = GroupWeightSender(address, 2, SyncOptions(bucket_mb=0.1, timeout_s=60))
        stats = tx.push(policy.state_dict(), version=7)
        tx.close()
    finally:
        log = finish(proc)
    assert proc.returncode == 0, log[-4000:]
    assert stats.buckets > 1
    before, after = torch.load(tmp_path / "before.pt"), torch.load(tmp_path / "after_7.pt")
    assert not torch.equal(before["sequences"], truth["sequences"])  # the engine was stale
    assert torch.equal(after["sequences"], truth["sequences"])
    assert torch.equal(after["logprobs"], truth["logprobs"])
    assert after["weight_version"] == 7 and after["versions"].tolist() == [7, 7, 7]
    assert_bitwise(after["state"], policy.state_dict())


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_receiver_that_dies_or_hangs_mid_sync_raises_within_the_timeout(toy, tmp_path, fault):
    address, timeout = free_address(), 8.0
    proc = start_peer("receiver", toy, tmp_path, "--address", address, f"--{fault}-after", "2")
    policy = peer.load_model(str(toy.llama), torch.float32)
    try:
        wait_ready(proc, tmp_path / "before.pt")
        tx = GroupWeightSender(address, 2, SyncOptions(bucket_mb=0.1, timeout_s=timeout))
        started = time.monotonic()
        with pytest.raises(WeightSyncError) as err:
            tx.push(policy.state_dict(), version=1)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
        finish(proc)
    assert (tmp_path / "fault").read_text() == ("dying" if fault == "die" else "hanging")
    assert elapsed < timeout + 5
    message = str(err.value)
    assert "rank 1" in message and "weight-sync group 'repulse-weights'" in message
    assert f"{timeout:g} s timeout" in message and "did not complete" in message


@pytest.mark.slow
@pytest.mark.distributed
def test_a_sender_that_dies_mid_sync_raises_on_the_receiver(toy, tmp_path):
    address, timeout = free_address(), 8.0
    proc = start_peer("sender", toy, tmp_path, "--address", address, "--timeout", str(timeout))
    copy = peer.load_model(str(toy.llama), torch.float32)
    engine = peer.hf_engine(copy)
    try:
        wait_ready(proc, tmp_path / "ready")
        rx = GroupWeightReceiver(engine, address, 1, 2, SyncOptions(timeout_s=timeout))
        started = time.monotonic()
        with pytest.raises(WeightSyncError, match=r"rank 0"):
            rx.receive(wait_s=timeout)
        elapsed = time.monotonic() - started
    finally:
        finish(proc)
    assert (tmp_path / "fault").read_text() == "dying"
    assert elapsed < timeout + 5
    # one bucket arrived before the sender died: the engine keeps its version and refuses to sample
    assert engine.weight_version == 0
    with pytest.raises(RuntimeError, match="incomplete weight update"):
        peer.greedy(engine)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_colocated_ranks_receive_rank_zeros_weights(toy, tmp_path, dtype):
    """Under torchrun only rank 0 holds the full weights (as after an FSDP gather): the local
    transport broadcasts them and both ranks' engines end bitwise equal to the policy."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(PEER)]
    cmd += [
        "colocated",
        "--model",
        str(toy.llama),
        "--out",
        str(tmp_path),
        "--dtype",
        dtype,
        "--timeout",
        "60",
    ]
    proc = subprocess.run(cmd, env=peer_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    policy = peer.load_model(str(toy.llama), getattr(torch, dtype))
    peer.perturb(policy)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["weight_version"] == 5 and result["buckets"] > 1
        assert_bitwise(result["state"], policy.state_dict())
