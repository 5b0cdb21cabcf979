"""The DeepSpeed engine passes every ``--engine.*`` field it honours into DeepSpeed's config (the
fields it does not honour at a given stage are warned about: ``tests/config/test_engine_fields.py``)."""

from __future__ import annotations

import torch

from repulse.config.sections import EngineSection
from repulse.engine.deepspeed_engine import ds_config
from repulse.engine.spec import optim_spec_from


def _config(hidden_size: int | None = 192, **fields) -> dict:
    from repulse.config.sections import AdamSection, MuonSection, OptimSection

    spec = optim_spec_from(AdamSection(), MuonSection(), OptimSection(), total_steps=10)
    return ds_config(
        EngineSection(backend="deepspeed", **fields), spec, torch.float32, 4, 2, 2, False, hidden_size
    )


def test_zero3_fields_reach_deepspeed():
    zero = _config(zero_stage=3, overlap_comm=True, zpg=2, cpu_offload=True, adam_offload=True)[
        "zero_optimization"
    ]
    assert zero["stage"] == 3 and zero["overlap_comm"] is True
    assert zero["zero_hpz_partition_size"] == 2
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    # norms and biases (hidden_size elements) stay gathered, weight matrices (hidden^2) are sharded
    assert zero["stage3_param_persistence_threshold"] == 1920
    assert "stage3_param_persistence_threshold" not in _config(None, zero_stage=3)["zero_optimization"]


def test_grad_accum_dtype_and_lower_stages():
    config = _config(zero_stage=1, overlap_comm=True, zpg=2, cpu_offload=True, grad_accum_dtype="fp32")
    assert config["data_types"] == {"grad_accum_dtype": "fp32"}
    zero = config["zero_optimization"]
    assert zero["overlap_comm"] is False  # ZeRO-1 has no overlap (warned at parse time)
    assert "zero_hpz_partition_size" not in zero and "offload_param" not in zero
    assert "stage3_param_persistence_threshold" not in zero
    assert "data_types" not in _config(zero_stage=2)
