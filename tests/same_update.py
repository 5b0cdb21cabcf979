"""Comparing two training runs that should have made the same update (fp32).

Only float summation order differs between, e.g., 1 and 2 processes or micro-batch 1 x 8 and
8 x 1. Adam divides each gradient entry by its own running magnitude, so an entry whose true
gradient is ~0 moves by up to ~lr in either direction on noise alone: an element-wise absolute
tolerance on the weights is either loose or flaky. What is stable is the update as a whole:
per tensor, ||W_b − W_a|| / ||W_a − W_0|| (measured <= 4e-4 on the toy models). A lost
micro-batch, a doubled gradient in one process or a skipped step moves it to 1e-1 and more.
"""

from __future__ import annotations

from pathlib import Path

import torch

UPDATE_RTOL = 1e-3
METRIC_RTOL = 1e-4  # per-step losses and gradient norms (relative; plus 1e-5 absolute near 0);
# step 1 agrees to ~1e-7, later steps start from weights that already differ by Adam noise


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(path)
    return load_file(p / "model.safetensors" if p.is_dir() else p)


def assert_same_update(start, a, b, rtol: float = UPDATE_RTOL) -> None:
    """Runs ``a`` and ``b`` (HF dirs or state dicts) moved every tensor of ``start`` the same way."""
    w0, wa, wb = (x if isinstance(x, dict) else weights(x) for x in (start, a, b))
    assert wa.keys() == wb.keys()
    moved = 0
    for k in wa:
        if k not in w0:  # a fresh head (a reward model's score): same seeded init in both runs
            err = float((wb[k].float() - wa[k].float()).norm() / wa[k].float().norm())
            assert err <= rtol / 10, f"{k}: the two runs differ by {err:.2e} of its norm"
            continue
        update = (wa[k].float() - w0[k].float()).norm()
        if update == 0:
            assert torch.equal(wa[k], wb[k]), f"{k}: frozen in one run only"
            continue
        moved += 1
        err = float((wb[k].float() - wa[k].float()).norm() / update)
        assert err <= rtol, f"{k}: the two updates differ by {err:.2e} of the update's norm (> {rtol})"
    assert moved, "no tensor was updated: nothing was compared"


def approx(x):
    import pytest

    return pytest.approx(x, rel=METRIC_RTOL, abs=1e-5)
