"""``--model.aux_loss_coef`` (seed ``--aux_loss_coef``): an MoE model's router load-balancing loss
joins the training loss of every offline trainer, as OpenRLHF adds ``aux_loss_coef x aux_loss``.

The model is a tiny Mixtral built locally (2 layers, 4 experts, top-2; ``repulse.toy.models``).
Hand checks: the loss itself on router logits written out by hand; transformers' own
``aux_loss`` on the toy Mixtral; and, per trainer, step 1's logged loss with the coefficient on
minus the loss with it off equals exactly coef x the logged ``aux_loss`` (same weights at step 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_rm import offline_cfg

from repulse.errors import UserError
from repulse.losses.moe import load_balancing_loss
from repulse.models.moe import real_tokens, router_aux_loss

TEMPLATE = "User: {}\nAssistant: "
LOG3 = math.log(3.0)


@pytest.fixture(scope="module")
def moe(toy, tmp_path_factory) -> Path:
    from repulse.toy.models import build_moe_model

    return build_moe_model(tmp_path_factory.mktemp("moe") / "mixtral", toy.tokenizer)


# --------------------------------------------------------------------------- the loss by hand


def test_load_balancing_loss_by_hand():
    """Two experts. p = softmax([log 3, 0]) = (3/4, 1/4). aux = N · Σ_e f_e · P_e."""
    same = torch.tensor([[LOG3, 0.0], [LOG3, 0.0]])  # both tokens prefer expert 0
    split = torch.tensor([[LOG3, 0.0], [0.0, LOG3]])  # one token each
    # top-1: f = (1, 0), P = (3/4, 1/4): aux = 2 · 3/4
    assert load_balancing_loss([same], 2, 1).item() == pytest.approx(1.5, abs=1e-6)
    # balanced: f = P = (1/2, 1/2): aux = top_k = 1
    assert load_balancing_loss([split], 2, 1).item() == pytest.approx(1.0, abs=1e-6)
    # the masked-out second token does not count: f = (1, 0), P = (3/4, 1/4)
    assert load_balancing_loss([split], 2, 1, torch.tensor([1, 0])).item() == pytest.approx(1.5, abs=1e-6)
    # two layers pool their counts: f = (3/4, 1/4), P = (5/8, 3/8): 2 · (15/32 + 3/32) = 9/8
    assert load_balancing_loss([same, split], 2, 1).item() == pytest.approx(1.125, abs=1e-6)
    # top-2 of 2 experts: f = (1, 1), so aux = 2 · (P_0 + P_1) = 2 whatever the routing
    assert load_balancing_loss([same], 2, 2).item() == pytest.approx(2.0, abs=1e-6)


def test_real_tokens_of_a_shared_prompt_mask():
    """A 4-D mask: tokens 0-3 one segment (3 a tail blind to 2), token 4 a pad that sees itself."""
    m = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    for q, keys in {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 3], 4: [4]}.items():
        m[0, 0, q, keys] = True
    assert real_tokens(m).tolist() == [[1, 1, 1, 1, 0]]
    additive = torch.zeros(m.shape).masked_fill(~m, torch.finfo(torch.float32).min)
    assert real_tokens(additive).tolist() == [[1, 1, 1, 1, 0]]


def test_equals_transformers_aux_loss_on_the_toy_mixtral(moe):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(moe)
    aux = router_aux_loss(model, 0.1, "--model.aux_loss_coef")
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    for kwargs in ({"attention_mask": mask}, {}):
        out = model(input_ids=ids, output_router_logits=True, **kwargs)
        assert aux.last().item() == pytest.approx(out.aux_loss.item(), abs=1e-6)
    assert model.config.output_router_logits is False  # the saved config is not changed
    out = model(input_ids=ids)  # our hook asks the backbone; the top model computes no aux_loss itself
    assert out.aux_loss is None and aux.last().item() > 0


def test_cached_generation_runs_with_the_hooks(moe):
    """Sampling (as an RL rollout would with the trained module) goes through the hooks too: a
    cached decoding step routes only its new tokens while its mask spans the cache (the mask is
    only passed on when the batch has padding, hence the left-padded second prompt)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(moe).eval()
    aux = router_aux_loss(model, 0.1, "--model.aux_loss_coef")
    ids = torch.tensor([[5, 9, 13, 17], [0, 0, 9, 13]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 7) and math.isfinite(aux.last().item())


def test_the_gradient_gains_exactly_coef_times_the_aux_gradient(moe):
    """SFT's loss on one micro-batch with the coefficient on minus off is c · units · aux, and so
    is its gradient: ∇(L + c·u·aux) − ∇L = c·u·∇aux, for every parameter."""
    from repulse.config.sections import AdamSection, EngineSection, MuonSection, OptimSection
    from repulse.engine import build_engine
    from repulse.engine.spec import optim_spec_from
    from repulse.models.loading import load_causal_lm
    from repulse.trainers.sft import SFTMethod

    model = load_causal_lm(str(moe))
    spec = optim_spec_from(AdamSection(), MuonSection(), OptimSection(), 1)
    engine = build_engine(model, spec, EngineSection())
    coef = 0.25
    aux = router_aux_loss(model, coef, "--model.aux_loss_coef")
    torch.manual_seed(1)
    ids = torch.randint(3, 200, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    batch["attention_mask"][1, 7:] = 0
    batch["loss_mask"][1, 7:] = 0
    units = SFTMethod(engine).units(batch)

    def collect() -> dict[str, torch.Tensor]:
        return {
            n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        }

    def grads(method) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        res = method.loss(batch)
        res.loss_sum.backward()
        return float(res.loss_sum.detach()), collect()

    off, g_off = grads(SFTMethod(engine))
    on, g_on = grads(SFTMethod(engine, aux))
    model.zero_grad()
    model(**{k: v for k, v in batch.items() if k != "loss_mask"})
    value = aux.last()
    value.backward()
    g_aux = collect()
    assert on - off == pytest.approx(coef * units * value.item(), rel=1e-5)
    gate = [n for n in g_aux if "gate" in n and g_aux[n].abs().sum() > 0]
    assert gate  # the router weights get the aux gradient
    for name in g_on:
        torch.testing.assert_close(g_on[name] - g_off[name], coef * units * g_aux[name], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- every trainer


def _config(command: str, toy, moe: Path, out: Path, coef: float):
    cfg = offline_cfg(moe, toy.sft, out, train__max_steps=1)
    cfg.data.input_template = TEMPLATE
    if command in ("sft", "kd"):
        cfg.data.input_key, cfg.data.output_key = "input", "output"
    if command == "kd":
        cfg.model.teacher_model = str(toy.llama)  # same tokenizer
    if command in ("dpo", "rm"):
        cfg.data.dataset, cfg.data.prompt_key = str(toy.pairs), "prompt"
    if command == "kto":
        cfg.data.dataset = str(toy.unpaired)
        cfg.data.input_key, cfg.data.output_key, cfg.data.label_key = "input", "output", "label"
    if command == "prm":
        cfg.data.dataset, cfg.data.input_template = str(toy.prm), None
        cfg.data.input_key, cfg.data.label_key = "input", "value"
        cfg.model.placeholder_token, cfg.model.reward_tokens = "ки", ["+", "-"]
    cfg.data.max_samples = 16  # rm scores its whole training set after training
    cfg.model.aux_loss_coef = coef
    return cfg


def _step1(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return next(r for r in rows if r["step"] == 1 and "loss" in r)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sft", "dpo", "rm", "kto", "kd", "prm"])
def test_each_trainer_adds_coef_times_aux_loss(command, toy, moe, tmp_path):
    import importlib

    trainer = importlib.import_module(f"repulse.trainers.{command}")
    coef = 0.5
    trainer.run(_config(command, toy, moe, tmp_path / "off", 0.0))
    trainer.run(_config(command, toy, moe, tmp_path / "on", coef))
    off, on = _step1(tmp_path / "off"), _step1(tmp_path / "on")
    assert "aux_loss" not in off and on["aux_loss"] > 0.5  # top-2 of 4 experts: aux >= 2 · (1/4 · ...)
    assert on["loss"] - off["loss"] == pytest.approx(coef * on["aux_loss"], abs=1e-5), (on, off)


def test_a_dense_model_with_a_coefficient_is_refused(toy, tmp_path):
    from repulse.trainers import sft

    cfg = _config("sft", toy, toy.llama, tmp_path / "dense", 0.01)
    with pytest.raises(
        UserError, match="is not a mixture-of-experts model .* no auxiliary load-balancing loss"
    ):
        sft.run(cfg)
    with pytest.raises(UserError, match="--model.aux_loss_coef must be >= 0"):
        sft.run(_config("sft", toy, toy.llama, tmp_path / "neg", -0.1))


# --------------------------------------------------------------------------- RL: the policy, the proposal


def _rl_step(toy, moe, out: Path, coef: float, method: str):
    """One RL step of the toy Mixtral policy (2 prompts x 2 samples, one micro-batch): the step's
    metrics and the policy's weights after it."""
    from safetensors.torch import load_file
    from test_rl import rl_cfg, run_rl

    over = dict(actor__model_name_or_path=str(moe), actor__aux_loss_coef=coef, train__max_steps=1,
                rollout__batch_size=2, rollout__n_samples_per_prompt=2, rollout__micro_batch_size=4,
                rollout__max_new_tokens=4, train__batch_size=4, train__micro_batch_size=4,
                repulse__method=method)  # fmt: skip
    if method != "rl":
        over.update(algo__advantage__estimator="reinforce")  # the REINFORCE family reads no estimator
    cfg = rl_cfg(toy, out, **over)
    if method != "rl":
        cfg.algo = type(cfg.algo)()
    (row,) = run_rl(cfg)
    weights = load_file(str(next(out.glob("**/model.safetensors"))))
    return row, weights


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rl", "repulse"])
def test_rl_adds_coef_times_aux_loss_to_the_policy(method, toy, moe, tmp_path):
    """``--actor.aux_loss_coef`` (seed ``--aux_loss_coef`` of train_ppo): the same first rollout
    (same seed, same start), the same policy loss, a logged router loss > 0 - and the update moves
    the weights differently, because the gradient gains coef·∇aux. Ignoring the flag leaves no
    aux_loss and identical weights. RePULSe runs the policy's loss on its own and the proposal's
    samples (two forwards: their mean router loss) and trains the proposal with it too."""
    off, w_off = _rl_step(toy, moe, tmp_path / "off", 0.0, method)
    on, w_on = _rl_step(toy, moe, tmp_path / "on", 0.5, method)
    assert "aux_loss" not in off and on["aux_loss"] > 0, on
    assert on["reward"] == off["reward"]
    for key in ("policy_loss", "repulse_loss_r"):
        if key in off:
            assert on[key] == pytest.approx(off[key], abs=1e-6), key
    moved = [k for k in w_on if not torch.equal(w_on[k], w_off[k])]
    assert any(".gate." in k for k in moved), moved  # the router itself is pushed toward balance
