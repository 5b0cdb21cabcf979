"""The nan policy: what ``run_micro_batches`` and ``FiniteGuard`` do with a non-finite loss or a
dropped update (a real local engine on a tiny regression model)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from repulse.config.sections import EngineSection
from repulse.engine import build_engine
from repulse.engine.base import OptimSpec
from repulse.errors import NonFiniteError
from repulse.run.finite import FiniteGuard
from repulse.trainers.fit import MicroResult, run_micro_batches


def _engine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    spec = OptimSpec(
        name="adam", lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, muon_lr=0.02,
        muon_momentum=0.95, muon_nesterov=True, muon_ns_steps=5, lr_scheduler="linear",
        warmup_ratio=0.0, min_lr_ratio=0.0, max_norm=1.0, total_steps=10,
    )  # fmt: skip
    return build_engine(model, spec, EngineSection(backend="local"))


class Squares:
    """Loss: the sum of squared outputs, plus ``extra`` on micro-batch ``bad_index`` - a constant, so
    its gradient is finite even when the constant is infinite."""

    def __init__(self, engine, extra: float = 0.0, bad_index: int = 1):
        self.engine, self.extra, self.bad_index, self.seen = engine, extra, bad_index, 0

    def units(self, batch: dict) -> float:
        return float(batch["x"].shape[0])

    def loss(self, batch: dict) -> MicroResult:
        out = self.engine.module(batch["x"]).pow(2).sum()
        if self.seen == self.bad_index:
            out = out + self.extra
        self.seen += 1
        return MicroResult(out)


def _batches() -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(2, 3, generator=gen)} for _ in range(3)]


def _weights(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


@pytest.mark.parametrize("extra", [math.inf, -math.inf, math.nan])
def test_stop_raises_before_any_update(extra):
    engine = _engine()
    before = _weights(engine)
    with pytest.raises(NonFiniteError, match="non-finite loss") as err:
        run_micro_batches(engine, Squares(engine, extra), _batches(), train=True)
    assert err.value.quantity == "loss" and "--train.nan_policy skip" in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(engine)))


def test_skip_drops_even_an_infinite_constant_whose_gradient_is_finite():
    """+inf added as a constant leaves the gradient finite; the loop poisons the micro-batch's
    gradient with NaN, so the engine drops the update: no weight, moment or lr position moves."""
    engine = _engine()
    guard = FiniteGuard("skip", 3)
    before = _weights(engine)
    stats = run_micro_batches(engine, Squares(engine, math.inf), _batches(), train=True, guard=guard)
    assert stats["nonfinite_loss"] == 1.0 and stats["loss"] == math.inf
    stats.update(engine.step())
    assert stats["update_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(engine)))
    assert engine.scheduler.last_epoch == 0 and not engine.optimizer.state
    guard.after_step(stats, 1)
    assert stats["skipped_steps"] == 1
    clean = run_micro_batches(engine, Squares(engine), _batches(), train=True, guard=guard)
    clean.update(engine.step())
    assert "nonfinite_loss" not in clean and "update_skipped" not in clean
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(engine)))


def test_evaluation_reports_a_non_finite_loss_without_stopping():
    engine = _engine()
    stats = run_micro_batches(engine, Squares(engine, math.inf), _batches(), train=False)
    assert stats["loss"] == math.inf


def test_guard_counts_consecutive_skips_and_stops_at_the_limit():
    guard = FiniteGuard("skip", max_consecutive_skips=3)
    dropped = {"loss": 0.5, "grad_norm": math.nan, "update_skipped": 1.0}
    assert guard.after_step(dict(dropped), 1)["skipped_steps"] == 1
    assert guard.after_step(dict(dropped), 2)["skipped_steps"] == 2
    assert guard.after_step({"loss": 0.4, "grad_norm": 1.0}, 3)["skipped_steps"] == 2  # resets the run
    guard.after_step(dict(dropped), 4)
    guard.after_step({"actor_loss": 0.1, "actor_grad_norm": math.inf, "actor_update_skipped": 1.0}, 5)
    with pytest.raises(NonFiniteError) as err:
        guard.after_step(dict(dropped), 6)
    text = " ".join(str(err.value).split())
    assert err.value.step == 6 and err.value.quantity == "grad_norm"
    assert "3 steps in a row were dropped" in text and "5 in all" in text
    assert "--train.nan_max_consecutive_skips 3" in text


def test_guard_stop_names_the_step_and_the_engine():
    guard = FiniteGuard("stop")
    assert guard.after_step({"loss": 1.0, "grad_norm": 2.0}, 1)["skipped_steps"] == 0
    with pytest.raises(NonFiniteError, match=r"at step 7: the gradient norm \(critic\) is inf"):
        guard.after_step({"critic_grad_norm": math.inf, "critic_update_skipped": 1.0}, 7)


def test_check_state_dict_names_the_first_non_finite_tensor():
    state = {"a": torch.ones(3), "steps": torch.tensor([1, 2]), "b": torch.tensor([1.0, math.nan, math.inf])}
    with pytest.raises(
        NonFiniteError, match="b holds 2 NaN/infinite value\\(s\\) \\(of 3\\); the rollout engine"
    ):
        FiniteGuard.check_state_dict(state, "the rollout engine was not updated", step=4)
    FiniteGuard.check_state_dict({"a": torch.ones(2)}, "x")


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="stop"):
        FiniteGuard("ignore")
