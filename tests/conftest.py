"""Shared fixtures: toy assets are built once per test session, locally, from nothing."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """A ``repulse.toy.ToyAssets``: tokenizer, tiny models and data files on disk."""
    from repulse.toy import build_all

    return build_all(tmp_path_factory.mktemp("toy"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_rm(toy, tmp_path_factory):
    """A toy reward model: ``repulse rm`` on the toy pairs (polite vs rude answers, 24 steps of 16
    pairs, lr 2e-3; test_rm shows this reaches held-out accuracy >= 0.9) on the toy Llama; it scores
    ``User: <prompt>\\nAssistant: <response>``, its training format."""
    from repulse.config.sections import OfflineConfig
    from repulse.trainers import rm

    out = tmp_path_factory.mktemp("rl_rm") / "rm"
    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(toy.llama)
    cfg.data.dataset = str(toy.pairs)
    cfg.data.prompt_key = "prompt"
    cfg.data.input_template = "User: {}\nAssistant: "
    cfg.data.max_len = 64
    cfg.train.batch_size = cfg.train.micro_batch_size = 16
    cfg.train.max_steps = 24
    cfg.adam.lr = 2e-3
    cfg.optim.lr_warmup_ratio = 0.0
    cfg.ckpt.output_dir = str(out)
    cfg.logger.progress_bar = False
    rm.run(cfg)
    return out


@pytest.fixture(scope="session")
def demo_lm_rm(toy, tmp_path_factory):
    """The demo's pretrained toy LM and toy reward model (its quick settings), built once."""
    from repulse.trainers import rm, sft
    from repulse.workflows.demo import _rm_config, _sft_config

    out = tmp_path_factory.mktemp("demo_lm_rm")
    sft.run(_sft_config(toy, out, quick=True))
    rm.run(_rm_config(toy, out / "lm", out, quick=True))
    return out / "lm", out / "rm"
