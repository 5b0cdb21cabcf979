"""A seed SFT command with ``--zero_stage 3`` shards, as it did under OpenRLHF's DeepSpeed.

``repulse sft`` runs the README's SFT command as copied (Hub names swapped for the toy, a few
steps) under ``torchrun --nproc-per-node 2`` on gloo/CPU with ``--zero_stage 2`` turned into
``--zero_stage 3``. No ``--engine.backend`` is given: the seed's DeepSpeed flags select the
DeepSpeed engine. Rank 0 prints the bytes of parameters every process holds once the engine
has taken the model (``repulse.engine.report_parameter_memory``); each must be below the
unsharded figure, which must itself be the toy Llama's parameter count in bf16 (the seed's
``--bf16``), counted here independently. With ``--save_steps 1 --save_hf_ckpt`` the step-1
checkpoint holds an HF model gathered from the shards, whose weights are DeepSpeed's own fp32
master weights of that step (read back with DeepSpeed's ``zero_to_fp32``) rounded to bf16.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HAS_DS = importlib.util.find_spec("deepspeed") is not None
LINE = re.compile(
    r"\[repulse\] engine (\w+)(?: ZeRO-(\d))? on (\d+) process\(es\): parameter bytes per process "
    r"\[([\d, ]+)\] \(unsharded (\d+)\)"
)


def _seed_zero3_argv(toy, data: Path) -> list[str]:
    from test_sft import _seed_argv

    argv, _out = _seed_argv("readme_sft", toy, data)
    stage = argv.index("--zero_stage")
    assert argv[stage + 1] == "2"
    argv[stage + 1] = "3"
    assert not any(a.startswith("--engine.") for a in argv)  # the engine is the seed's choice
    return argv


@pytest.mark.slow
@pytest.mark.distributed
def test_seed_zero_stage_3_shards_parameters_over_two_processes(toy, tmp_path):
    if not HAS_DS:
        pytest.skip("the seed's --zero_stage selects DeepSpeed, which is not installed")
    from transformers import AutoModelForCausalLM

    rows = [json.loads(line) for line in toy.sft.read_text().splitlines()[:16]]
    data = tmp_path / "openorca.jsonl"
    data.write_text(
        "".join(json.dumps({"question": r["input"], "response": r["output"]}) + "\n" for r in rows)
    )
    argv = _seed_zero3_argv(toy, data)
    # a few steps; a large constant lr so that step 1 visibly moves the bf16 weights
    shrink = ["--train.batch_size", "4", "--train.micro_batch_size", "2", "--train.max_steps", "2",
              "--logger.progress_bar", "false", "--save_steps", "1", "--save_hf_ckpt",
              "--optim.lr_warmup_ratio", "0", "--adam.lr", "1e-2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "repulse", "sft", *argv, *shrink],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "--engine.backend deepspeed" in proc.stderr  # the note says which engine and why

    (match,) = LINE.findall(proc.stdout)
    backend, stage, world, per_rank, unsharded = match
    per_rank = [int(x) for x in per_rank.split(",")]
    unsharded = int(unsharded)
    assert (backend, stage, world) == ("deepspeed", "3", "2")
    whole = AutoModelForCausalLM.from_pretrained(toy.llama)
    assert unsharded == 2 * sum(p.numel() for p in whole.parameters())  # bf16: 2 bytes a parameter
    assert len(per_rank) == 2 and all(0 < b < unsharded for b in per_rank), (per_rank, unsharded)
    print(f"per-process parameter bytes {per_rank} of {unsharded} unsharded")

    out = tmp_path / "checkpoint" / "llama3-8b-sft"
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]
    AutoModelForCausalLM.from_pretrained(out)  # the gathered export loads

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    step = out / "checkpoints" / "step_1"
    hf = load_file(step / "model_hf" / "model.safetensors")
    masters = get_fp32_state_dict_from_zero_checkpoint(str(step / "model"), tag="ds")
    assert set(hf) <= set(masters) and len(hf) == len(whole.state_dict())
    for name, tensor in hf.items():
        assert tensor.dtype == torch.bfloat16
        torch.testing.assert_close(tensor, masters[name].to(torch.bfloat16), atol=0, rtol=0, msg=name)
    initial = whole.state_dict()
    assert any(not torch.equal(hf[k], initial[k].to(torch.bfloat16)) for k in hf)  # it is step 1, not step 0
