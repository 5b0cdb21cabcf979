"""Optimizers and schedules: hand-computed lrs, the Muon/AdamW split, update equivalences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from repulse.config.sections import AdamSection, MuonSection, OptimSection
from repulse.engine.base import OptimSpec
from repulse.engine.optim import (
    MuonAdamW,
    build_optimizer,
    build_scheduler,
    current_lrs,
    param_groups,
    warmup_steps,
)
from repulse.engine.spec import optim_spec_from
from repulse.errors import UserError


def spec(**kw) -> OptimSpec:
    base = dict(
        name="adam",
        lr=1.0,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        muon_lr=0.02,
        muon_momentum=0.95,
        muon_nesterov=True,
        muon_ns_steps=5,
        lr_scheduler="cosine_with_min_lr",
        warmup_ratio=0.25,
        min_lr_ratio=0.1,
        max_norm=1.0,
        total_steps=10,
    )
    base.update(kw)
    return OptimSpec(**base)


def lrs_used(s: OptimSpec, n: int) -> list[float]:
    """The lr each of the first ``n`` optimizer steps runs with (as engines report it)."""
    p = nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer([p], s)
    sched = build_scheduler(opt, s)
    out = []
    for _ in range(n):
        out.append(current_lrs(opt)["lr"])
        opt.step()
        sched.step()
    return out


# total 10, warmup_ratio 0.25 -> W = ceil(2.5) = 3 warm-up steps: 0, 1/3, 2/3.
# Then p = (s - 3) / 7 and cosine lr = 0.1 + 0.9 * (1 + cos(pi p)) / 2, with
# cos(pi/7) = 0.9009688679, cos(2pi/7) = 0.6234898019, cos(3pi/7) = 0.2225209340.
COSINE = [
    0.0,
    1 / 3,
    2 / 3,
    1.0,
    0.1 + 0.45 * (1 + 0.9009688679),  # 0.9554359905
    0.1 + 0.45 * (1 + 0.6234898019),  # 0.8305704109
    0.1 + 0.45 * (1 + 0.2225209340),  # 0.6501344203
    0.1 + 0.45 * (1 - 0.2225209340),  # 0.4498655797
    0.1 + 0.45 * (1 - 0.6234898019),  # 0.2694295891
    0.1 + 0.45 * (1 - 0.9009688679),  # 0.1445640094
    0.1,  # past the end: stays at min_lr
]
CONSTANT = [0.0, 1 / 3, 2 / 3] + [1.0] * 8
# linear: 1 - (s - 3) / 7 after warm-up, 0 at s = 10.
LINEAR = [0.0, 1 / 3, 2 / 3, 1.0, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7, 0.0]


@pytest.mark.parametrize(
    "name,expected", [("cosine_with_min_lr", COSINE), ("constant", CONSTANT), ("linear", LINEAR)]
)
def test_schedules_hand_computed(name, expected):
    assert warmup_steps(spec()) == 3
    got = lrs_used(spec(lr_scheduler=name), len(expected))
    assert got == pytest.approx(expected, abs=1e-9)


def test_no_warmup_starts_at_peak_and_scales_every_group():
    s = spec(warmup_ratio=0.0, name="muon", lr=1e-3, muon_lr=0.02)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    opt = build_optimizer(model, s)
    sched = build_scheduler(opt, s)
    assert current_lrs(opt) == {"lr": 1e-3, "muon_lr": 0.02}
    for _ in range(5):
        opt.step()
        sched.step()
    factor = 0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 10))
    assert current_lrs(opt)["lr"] == pytest.approx(1e-3 * factor)
    assert current_lrs(opt)["muon_lr"] == pytest.approx(0.02 * factor)


def test_unknown_names_name_the_flag():
    with pytest.raises(UserError, match="--optim.lr_scheduler"):
        build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), spec(lr_scheduler="cosine"))
    with pytest.raises(UserError, match="--optim.name"):
        build_optimizer([nn.Parameter(torch.zeros(2, 2))], spec(name="sgd"))
    with pytest.raises(UserError, match="--optim.name"):
        optim_spec_from(AdamSection(), MuonSection(), OptimSection(name="lion"), 10)
    with pytest.raises(UserError, match="--optim.lr_scheduler"):
        optim_spec_from(AdamSection(), MuonSection(), OptimSection(lr_scheduler="step"), 10)


def test_optim_spec_from_sections():
    s = optim_spec_from(
        AdamSection(lr=3e-4, betas=[0.8, 0.9], weight_decay=0.05),
        MuonSection(lr=0.01, nesterov=False),
        OptimSection(name="muon"),
        7,
    )
    assert (s.name, s.lr, s.betas, s.weight_decay, s.muon_lr, s.muon_nesterov, s.total_steps) == (
        "muon",
        3e-4,
        (0.8, 0.9),
        0.05,
        0.01,
        False,
        7,
    )
    assert (s.lr_scheduler, s.warmup_ratio, s.min_lr_ratio, s.max_norm) == (
        "cosine_with_min_lr",
        0.03,
        0.1,
        1.0,
    )


def tiny_llama(cls_name: str = "LlamaForCausalLM", **extra):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        **extra,
    )
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(cfg)


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_muon_split_hidden_matrices_vs_rest():
    model = tiny_llama()
    groups = param_groups(model, spec(name="muon"))
    muon = _names(model, [p for g in groups if g["use_muon"] for p in g["params"]])
    adam_decay = _names(model, groups[0]["params"])
    no_decay = _names(
        model, [p for g in groups if not g["use_muon"] and g["weight_decay"] == 0.0 for p in g["params"]]
    )
    expected = {f"model.layers.{i}.self_attn.{h}_proj.weight" for i in range(2) for h in "qkvo"}
    expected |= {f"model.layers.{i}.mlp.{h}_proj.weight" for i in range(2) for h in ("gate", "up", "down")}
    assert muon == expected
    assert adam_decay == {"model.embed_tokens.weight", "lm_head.weight"}
    assert no_decay and all("norm" in n for n in no_decay)
    # a reward/value head stays on AdamW, whatever its shape
    rm = tiny_llama("LlamaForSequenceClassification", num_labels=2)
    rm_muon = _names(
        rm, [p for g in param_groups(rm, spec(name="muon")) if g["use_muon"] for p in g["params"]]
    )
    assert "score.weight" not in rm_muon and len(rm_muon) == 14


def test_adam_groups_exempt_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(model, spec())
    assert _names(model, groups[0]["params"]) == {"0.weight"} and groups[0]["weight_decay"] == 0.1
    assert (
        _names(model, groups[1]["params"]) == {"0.bias", "1.weight", "1.bias"}
        and groups[1]["weight_decay"] == 0.0
    )


def test_one_muon_step_changes_every_weight():
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, spec(name="muon", lr=1e-3))
    assert isinstance(opt, MuonAdamW)
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def _newton_schulz(g: torch.Tensor, steps: int) -> torch.Tensor:
    """fp64 quintic Newton-Schulz as published: X = G / ||G||_F in the wide orientation, then
    X <- aX + (bA + cA^2)X with A = XX^T and (a, b, c) = (3.4445, -4.7750, 2.0315)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.shape[0] > g.shape[1]
    x = (g.T if tall else g).double()
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_steps_match_hand_computed_newton_schulz(nesterov):
    """Three Muon steps on a tall (12 x 5) and a wide (4 x 9) matrix, by hand in fp64:
    B <- mu B + (1 - mu) G; U = (1 - mu) G + mu B with Nesterov, else B; O = NS5(U);
    W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) O. Ours runs Newton-Schulz in bf16, so each
    step's update is compared as a whole: within 6e-2 of its norm (measured: 1.4e-2 with
    Nesterov, 3.5e-2 without). Leaving out the momentum, the sqrt(rows/cols) factor, the decay
    or one Newton-Schulz iteration puts it off by 0.16 to 1.0."""
    torch.manual_seed(0)
    lr, wd, mu = 0.02, 0.05, 0.9
    weights = [torch.randn(12, 5), torch.randn(4, 9)]
    params = [nn.Parameter(x.clone()) for x in weights]
    opt = MuonAdamW(
        [{"params": params, "lr": lr, "use_muon": True}],
        weight_decay=wd,
        momentum=mu,
        nesterov=nesterov,
        ns_steps=5,
    )
    hand = [x.double() for x in weights]
    bufs = [torch.zeros_like(x) for x in hand]
    for step in range(3):
        gen = torch.Generator().manual_seed(10 + step)
        grads = [torch.randn(x.shape, generator=gen) for x in weights]
        before = [p.detach().double().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            g = g.double()
            bufs[i] = mu * bufs[i] + (1 - mu) * g
            u = (1 - mu) * g + mu * bufs[i] if nesterov else bufs[i]
            rows, cols = g.shape
            want = before[i] * (1 - lr * wd) - lr * math.sqrt(max(1.0, rows / cols)) * _newton_schulz(u, 5)
            got = params[i].detach().double()
            err = float((got - want).norm() / (want - before[i]).norm())
            assert err < 6e-2, (step, tuple(g.shape), err)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
def test_muon_matches_torch_muon_and_adamw_matches_torch_adamw():
    torch.manual_seed(0)
    w = torch.randn(12, 5)  # tall: exercises the transpose and the sqrt(rows/cols) lr factor
    b = torch.randn(5)
    ours_w, ours_b = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    ref_w, ref_b = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    ours = MuonAdamW(
        [
            {"params": [ours_w], "lr": 0.02, "use_muon": True},
            {"params": [ours_b], "lr": 1e-2, "use_muon": False},
        ],
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        momentum=0.9,
        nesterov=True,
        ns_steps=5,
    )
    ref_muon = torch.optim.Muon([ref_w], lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=True, ns_steps=5)
    ref_adam = torch.optim.AdamW(
        [ref_b], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False
    )
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        gw, gb = torch.randn(12, 5, generator=g), torch.randn(5, generator=g)
        ours_w.grad, ref_w.grad, ours_b.grad, ref_b.grad = gw.clone(), gw.clone(), gb.clone(), gb.clone()
        ours.step()
        ref_muon.step()
        ref_adam.step()
    assert torch.equal(ours_w, ref_w)
    assert torch.equal(ours_b, ref_b)


def test_adam_is_fused_on_cpu_and_matches_hand_computed_adamw():
    """Two AdamW steps on one weight, hand-computed: m = b1·m + (1-b1)·g, v = b2·v + (1-b2)·g²,
    w ← w·(1 - lr·wd) - lr · (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)."""
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    p = nn.Parameter(w0.clone())
    opt = build_optimizer([p], spec(lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1))
    assert opt.defaults["fused"] is True
    grads = [torch.tensor([[0.2, -0.4], [1.0, 0.0]]), torch.tensor([[0.1, 0.3], [-1.0, 2.0]])]
    w, m, v = w0.double(), torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        g = g.double()
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        w = w * (1 - 0.1 * 0.1) - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-8)
    torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-6)
