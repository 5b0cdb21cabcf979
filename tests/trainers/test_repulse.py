"""RePULSe end to end on the toy: every method runs, the proposal finds bad outputs,
eval-tail gathers every sample across processes, and bad input is refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from repulse.config import parse_config
from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.trainers.rl import validate


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["reinforce", "reward_transform", "p_proposal", "repulse"])
def test_every_method_runs_and_logs_exact_p_bad(toy, demo_lm_rm, tmp_path, method):
    from repulse.trainers.rl import run as run_rl
    from repulse.workflows.demo import rl_config

    lm, rm = demo_lm_rm
    cfg = rl_config(toy, lm, rm, tmp_path, method, seed=1, quick=True)
    cfg.repulse.fit_steps, cfg.train.num_episodes = 1, 3
    run_rl(cfg)
    run_dir = Path(cfg.ckpt.output_dir)
    rows = _metrics(run_dir)
    exact = [r for r in rows if "p_bad_exact" in r]
    assert [r["step"] for r in exact] == [0, 3]
    assert 0.0 < exact[0]["p_bad_exact"] < 0.2  # the pretrained toy LM says a bad word sometimes
    steps = [r["step"] for r in rows if "reward" in r]
    assert steps == [1, 2, 3]
    if method == "repulse":
        assert (run_dir / "proposal" / "config.json").is_file()
        assert all("loss_ctl" in r for r in rows if "reward" in r)
        # the proposal's samples are worse than the policy's: it looks for low reward
        assert rows[-1]["q_reward"] < rows[-1]["reward"]
    if method == "p_proposal":
        assert all("loss_u" in r for r in rows if "reward" in r)


@pytest.mark.slow
def test_a_threshold_outside_the_rewards_seen_warns(toy, demo_lm_rm, tmp_path, monkeypatch, capsys):
    import repulse.errors
    from repulse.trainers.rl import run as run_rl
    from repulse.workflows.demo import rl_config

    monkeypatch.setattr(repulse.errors, "_warned", set())
    lm, rm = demo_lm_rm
    cfg = rl_config(toy, lm, rm, tmp_path, "reinforce", seed=1, quick=True)
    cfg.repulse.fit_steps, cfg.train.num_episodes, cfg.repulse.analytic_bad_word_calc = 1, 2, False
    cfg.repulse.bad_threshold = -1e6
    run_rl(cfg)
    err = capsys.readouterr().err
    assert "--repulse.bad_threshold -1e+06 is outside the range of rewards seen" in err
    assert "were 0 throughout" in err
    rows = [r for r in _metrics(Path(cfg.ckpt.output_dir)) if "reward" in r]
    assert all(r["reward_min"] <= r["reward"] <= r["reward_max"] for r in rows)


def test_repulse_validation_errors():
    base = [
        "--actor.model_name_or_path", "m", "--data.prompt_dataset", "p.jsonl", "--reward.remote_url", "r.py",
    ]  # fmt: skip
    with pytest.raises(UserError, match="--repulse.beta must be > 0"):
        parse_config("rl", RLConfig, [*base, "--repulse.method", "repulse", "--repulse.beta", "-1",
                                      "--rollout.n_samples_per_prompt", "4"], validate)  # fmt: skip
    with pytest.raises(UserError, match="n_samples_per_prompt to 2 or more"):
        parse_config("rl", RLConfig, [*base, "--repulse.method", "repulse"], validate)
    with pytest.raises(UserError, match="--repulse.reward_transform"):
        parse_config("rl", RLConfig, [*base, "--repulse.method", "reward_transform",
                                      "--rollout.n_samples_per_prompt", "4"], validate)  # fmt: skip
    with pytest.raises(UserError, match="--repulse.q_updates_per_step must be >= 1, got 0"):
        parse_config("rl", RLConfig, [*base, "--repulse.method", "repulse", "--repulse.q_updates_per_step", "0",
                                      "--rollout.n_samples_per_prompt", "4"], validate)  # fmt: skip
    with pytest.raises(UserError, match="--actor.dual_clip must be > 1"):
        parse_config("rl", RLConfig, [*base, "--actor.dual_clip", "0.5"], validate)
    with pytest.raises(UserError, match="--algo.dynamic_filtering_range 1.0 0.0"):
        parse_config("rl", RLConfig, [*base, "--algo.dynamic_filtering_enable", "--algo.dynamic_filtering_range",
                                      "1", "0", "--rollout.n_samples_per_prompt", "4"], validate)  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_eval_tail_on_two_processes_writes_every_sample_once(toy, demo_lm_rm, tmp_path):
    """Every sample of both ranks in one file, written once; each rank draws its own samples. The
    5 prompts are the same text, so rank 1's first generate call (prompts 1 and 3, padded with a
    copy of prompt 0) has the same input as rank 0's (prompts 0, 2, 4): with one random stream
    shared by the ranks, its samples would repeat rank 0's."""
    lm, rm = demo_lm_rm
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((json.dumps({"input": "This man is a"}) + "\n") * 5)
    out = tmp_path / "tail"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "repulse", "eval-tail",
        "--tail.policy", str(lm), "--reward.model_name_or_path", str(rm),
        "--data.prompt_dataset", str(prompts), "--rollout.n_samples_per_prompt", "3",
        "--rollout.max_new_tokens", "2", "--tail.passes", "2", "--tail.eta", "0", "-1",
        "--ckpt.output_dir", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 3 * 2  # prompts x samples x passes, gathered from both ranks
    assert {r["pass"] for r in rows} == {0, 1}
    responses = [r["response"] for r in rows]  # rank 0: 3 prompts x 3 samples x 2 passes, then rank 1
    assert responses[18:24] != responses[0:6]
    summary = json.loads((out / "tail_summary.json").read_text())
    assert set(summary["by_eta"]) == {"0", "-1"}
    p_bad = summary["by_eta"]["0"]["p_bad"]["mean"]
    assert p_bad == pytest.approx(sum(r["reward"] < 0 for r in rows) / len(rows))
    report = subprocess.run(
        [sys.executable, "-m", "repulse", "eval-tail", "report", str(out / "samples.jsonl"), "--eta", "2.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["by_eta"]["2.5"]["p_bad"]["mean"] == pytest.approx(
        sum(r["reward"] < 2.5 for r in rows) / len(rows)
    )


def _eval_tail(argv: list[str]) -> None:
    from repulse.cli import main

    assert main(["eval-tail", *argv]) == 0


@pytest.mark.slow
def test_eval_tail_proposal_exact_negdata_and_default_output(demo_lm_rm, tmp_path):
    """--tail.proposal: rows carry log q and the summary an importance-sampling estimate (with q :=
    p the weights are all 1, so it equals the plain estimate and the ESS is the sample count);
    --tail.exact adds the exact P(bad word); --tail.negdata_threshold writes exactly the distinct
    samples below it; with no --ckpt.output_dir the output goes into the policy's run directory
    (it holds the run's config.yaml, which `repulse plot` pairs the summary with)."""
    import shutil

    lm, rm = demo_lm_rm
    policy = tmp_path / "policy"
    shutil.copytree(lm, policy)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"input": "This man is a"}) + "\n")
    common = [
        "--reward.model_name_or_path", str(rm), "--data.prompt_dataset", str(prompts),
        "--rollout.n_samples_per_prompt", "64", "--rollout.max_new_tokens", "2", "--tail.eta", "0",
    ]  # fmt: skip
    argv = ["--tail.policy", str(policy), "--tail.proposal", str(policy), "--tail.exact", *common]
    _eval_tail(argv)
    assert (policy / "tail_config.yaml").is_file() and (policy / "config.yaml").is_file()
    rows = [json.loads(line) for line in (policy / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and all(r["log_q"] == pytest.approx(r["logprob"], abs=1e-5) for r in rows)
    summary = json.loads((policy / "tail_summary.json").read_text())
    assert summary["exact_log_p_bad"] < 0
    assert summary["by_eta"]["0"]["samples_from"] == "proposal"
    # a threshold inside the rewards seen (the quick toy RM's scale), chosen at report time
    eta = sorted(r["reward"] for r in rows)[32]
    report = subprocess.run(
        [sys.executable, "-m", "repulse", "eval-tail", "report", str(policy / "samples.jsonl"), "--eta", repr(eta)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    (imp,) = json.loads(report.stdout)["by_eta"][f"{eta:g}"]["importance"]
    naive = sum(r["reward"] < eta for r in rows) / len(rows)
    assert 0 < naive < 1
    assert imp["self_normalised_biased"] == pytest.approx(naive, abs=1e-5)
    assert imp["estimate"] == pytest.approx(naive, abs=1e-4)
    assert imp["ess"] == pytest.approx(64, rel=1e-4)
    # the same seed draws the same samples: harvest those below eta
    _eval_tail([*argv, "--tail.negdata_threshold", repr(eta), "--ckpt.overwrite"])  # replaces the first
    neg = [json.loads(line) for line in (policy / "negdata.jsonl").read_text().splitlines()]
    expected = {(r["prompt"], r["response"]) for r in rows if r["reward"] < eta}
    assert {(r["prompt"], r["response"]) for r in neg} == expected and len(neg) == len(expected)

    # not a run directory: the default is ./tail_eval
    bare = tmp_path / "bare"
    shutil.copytree(lm, bare)
    (bare / "config.yaml").unlink()
    monkey_cwd = tmp_path / "cwd"
    monkey_cwd.mkdir()
    subprocess.run(
        [sys.executable, "-m", "repulse", "eval-tail", "--tail.policy", str(bare), *common],
        cwd=monkey_cwd, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (monkey_cwd / "tail_eval" / "samples.jsonl").is_file() and not (bare / "samples.jsonl").exists()


# --------------------------------------------------------------------------- the joint step's wiring


def _token_logprobs(model, s):
    """log p of each response token, written out here (independent of repulse's helpers)."""
    import torch

    pos = (s.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=s.sequences, attention_mask=s.attention_mask, position_ids=pos).logits
    logits = logits[:, s.prompt_len - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, s.response[..., None]).squeeze(-1) * s.action_mask


def test_joint_step_gradients_are_the_documented_losses(toy):
    """One RePULSe joint step through the method's two losses and ``run_micro_batches``: p's gradient is
    ∇[L_r + α·L_u] and q's is ∇L_q, each recomputed here from the formulas of spec §1.3-1.4 with
    plain torch (token-mean log-likelihoods; RLOO baseline; w = softmax per prompt of
    Σ log p(s') − β·r − Σ log q_old(s'), masked sums; π weights of the tokens strictly before t).
    2 prompts × N = 3 samples of up to 5 tokens (variable lengths), float64 references, 1e-5."""
    import copy

    import torch

    from repulse.config.sections import AdamSection, EngineSection, MuonSection, OptimSection
    from repulse.engine import build_engine
    from repulse.engine.spec import optim_spec_from
    from repulse.losses.repulse import neg_training_weights
    from repulse.models.loading import load_causal_lm
    from repulse.rl.experience import Experience, batched_logprobs
    from repulse.rl.rollout import hf_generate
    from repulse.trainers.fit import run_micro_batches
    from repulse.trainers.rl.local_roles import _Bound
    from repulse.trainers.rl.updates import PolicyRepulseLoss, ProposalCTLLoss, RepulseBatch

    torch.manual_seed(0)
    n, alpha, beta = 3, 0.7, 2.0
    base = load_causal_lm(str(toy.llama))
    p_ref, q_ref = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():  # q differs from p, so the importance weights are not uniform
        for w in q_ref.parameters():
            w.add_(0.05 * torch.randn_like(w))
    engines = {
        k: build_engine(
            copy.deepcopy(m),
            optim_spec_from(AdamSection(), MuonSection(), OptimSection(), 1),
            EngineSection(),
        )
        for k, m in (("p", p_ref), ("q", q_ref))
    }
    prompts = [[1, 40, 41, 42], [1, 50, 51]]
    gen = dict(n_samples=n, max_new_tokens=5, temperature=1.0, top_p=1.0, top_k=0, eos_id=2, pad_id=0,
               micro_batch_size=16, device=torch.device("cpu"))  # fmt: skip

    def ended_early(s, lengths):  # as if EOS had come after `lengths` tokens: variable lengths
        s.action_mask = (torch.arange(s.action_mask.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
        s.attention_mask = torch.cat([s.attention_mask[:, : s.prompt_len], s.action_mask], 1)
        s.sequences[:, s.prompt_len :][s.action_mask == 0] = 0
        return s

    sp = ended_early(hf_generate(p_ref, prompts, **gen), [5, 2, 4, 1, 5, 3])
    sq = ended_early(hf_generate(q_ref, prompts, **gen), [3, 5, 1, 4, 2, 5])
    returns = torch.tensor([0.3, -1.2, 2.0, 0.5, 0.1, -0.4])
    r_q = torch.tensor([-2.0, 0.5, 1.0, -0.3, 0.8, -1.5])
    p_exp = Experience(sp, batched_logprobs(p_ref, sp, 16), returns=returns)
    q_old = batched_logprobs(q_ref, sq, 16)
    q_exp = Experience(sq, q_old, rewards=r_q)
    # what the method computes once per step: p's log-probs of q's samples and the L_u weights
    mq_ = sq.action_mask.float()
    q_exp.info["logp_p"] = batched_logprobs(p_ref, sq, 16)
    q_exp.info["w_u"] = neg_training_weights(
        (q_exp.info["logp_p"] * mq_).sum(-1), (q_old * mq_).sum(-1), r_q, beta, n
    )
    ctl = _Bound(ProposalCTLLoss(beta, 1.0, n), engines["q"].module)
    run_micro_batches(engines["q"], ctl, [q_exp], train=True)
    p_loss = _Bound(PolicyRepulseLoss(alpha), engines["p"].module)
    run_micro_batches(engines["p"], p_loss, [RepulseBatch(p_exp, q_exp, n)], train=True)

    # the references, from the formulas
    def tmean(x, m):
        return (x * m).sum(-1) / m.sum(-1)

    mp, mq = sp.action_mask.double(), sq.action_mask.double()
    lp_p = _token_logprobs(p_ref, sp).double()
    lp_q = _token_logprobs(p_ref, sq).double()
    R = returns.double().view(-1, n)
    adv = (R - (R.sum(1, keepdim=True) - R) / (n - 1)).flatten()
    loss_r = (adv * -tmean(lp_p, mp)).mean()
    logw = (lp_q.detach() * mq).sum(-1) - beta * r_q.double() - (q_old.double() * mq).sum(-1)
    w = torch.softmax(logw.view(-1, n), 1).flatten()
    loss_u = (w * tmean(lp_q, mq)).mean()
    (loss_r + alpha * loss_u).backward()
    lq = _token_logprobs(q_ref, sq).double()
    diff = (lp_q.detach() - q_old.double()) * mq
    w_pi = torch.softmax((diff.cumsum(-1) - diff).view(-1, n, diff.shape[-1]), 1).reshape(diff.shape)
    loss_q = tmean((w_pi - w[:, None]) * (lq - lp_q.detach()), mq).mean()
    loss_q.backward()
    for name, ref in (("p", p_ref), ("q", q_ref)):
        got = dict(engines[name].module.named_parameters())
        for k, v in ref.named_parameters():
            torch.testing.assert_close(
                got[k].grad, v.grad.to(got[k].grad.dtype), atol=1e-5, rtol=1e-4, msg=f"{name}:{k}"
            )
        assert any(v.grad.abs().sum() > 0 for v in ref.parameters())


@pytest.mark.slow
def test_update_order_and_extra_proposal_steps(toy, demo_lm_rm, tmp_path):
    """Default: q's CTL step targets σ built from the pre-update p, and p's step (which sees q only
    through the stored samples and log q_old) is the same whatever the order; ``--repulse.p_first``
    updates p first and q then targets the updated p, so p ends equal and q differs.
    ``--repulse.q_updates_per_step 3``: two extra q-only steps on fresh q samples before the joint
    step (logged as ``q_only_*``), which moves q further and leaves p's own samples unchanged."""
    import torch
    from same_update import weights

    from repulse.trainers.rl import run as run_rl
    from repulse.workflows.demo import rl_config

    lm, rm = demo_lm_rm

    def go(name: str, **over):
        cfg = rl_config(toy, lm, rm, tmp_path / name, "repulse", seed=1, quick=True)
        cfg.repulse.fit_steps, cfg.train.num_episodes, cfg.repulse.analytic_bad_word_calc = 1, 1, False
        for k, v in over.items():
            setattr(cfg.repulse, k, v)
        run_rl(cfg)
        out = Path(cfg.ckpt.output_dir)
        return [r for r in _metrics(out) if "reward" in r], weights(out), weights(out / "proposal")

    rows, p, q = go("q_first")
    rows_pf, p_pf, q_pf = go("p_first", p_first=True)
    rows_x, p_x, q_x = go("extra", q_updates_per_step=3)
    assert len(rows) == len(rows_pf) == len(rows_x) == 1
    assert rows[0]["reward"] == rows_pf[0]["reward"]  # same seed, same p samples
    for k in p:
        torch.testing.assert_close(p_pf[k], p[k], atol=1e-7, rtol=0)
    assert any(not torch.equal(q_pf[k], q[k]) for k in q)
    assert "q_only_loss_ctl" in rows_x[0] and "q_only_q_grad_norm" in rows_x[0]
    assert "q_only_loss_ctl" not in rows[0]
    assert any(not torch.equal(q_x[k], q[k]) for k in q)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(toy, tmp_path):
    """``repulse rl --repulse.method repulse`` (the toy Llama as p and q, the e-fraction reward,
    eta 0.1, a KL penalty to a reference, 2 q-only updates per step) for 10 steps, checkpoints
    every 3, SIGKILLed after step_3 is on disk and later steps are logged, resumed with
    ``--ckpt.load_enable``: every logged metric (p's and q's losses, rewards, gradient norms)
    and the final weights of p and of the proposal q equal an uninterrupted run's bit for bit
    (so q's optimizer state came back too), and metrics.jsonl holds steps 1..10 once each
    (``resume.py``)."""
    from resume import assert_kill_and_resume_is_bit_identical
    from test_rl import rl_cfg
    from test_rm import cfg_file

    over = dict(
        repulse__method="repulse",
        repulse__beta=10.0,
        repulse__alpha=0.5,
        repulse__proposal_lr=1e-2,
        repulse__q_updates_per_step=2,
        repulse__bad_threshold=0.1,
        algo__kl__init_coef=0.05,
        rollout__batch_size=4,
        rollout__micro_batch_size=16,
        train__micro_batch_size=8,
        train__max_steps=10,
        ckpt__save_steps=3,
    )
    cfg = rl_cfg(toy, tmp_path / "unused", **over)
    defaults = type(cfg)()
    cfg.train.batch_size = defaults.train.batch_size  # read by the PPO family only (refused here)
    cfg.critic = defaults.critic  # RePULSe has no critic
    argv = ["rl", "--config", cfg_file(cfg, tmp_path / "rl.yaml")]
    full, _ = assert_kill_and_resume_is_bit_identical(argv, tmp_path, every=3, n=10, min_weights=2)
    assert (full / "proposal" / "model.safetensors").is_file()
    rows = [json.loads(ln) for ln in (full / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert all("loss_ctl" in r and "q_reward" in r and "q_only_loss_ctl" in r for r in rows), rows[0]
