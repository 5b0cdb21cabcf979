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
def demo_lm_rm(tmp_path_factory):
    """The demo's pretrained toy LM and reward model (its quick world: word-level tokenizer, GPT-2
    of hidden size 64, the bad words rare after "This man is a"), built once; ``world.json``
    beside them records η."""
    from repulse.workflows.demo.world import WorldSpec, build_world

    world = build_world(tmp_path_factory.mktemp("demo_lm_rm"), WorldSpec.quick(), log=lambda _msg: None)
    return world.lm, world.rm
