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
