"""The demo's experiment design: two toy settings, four methods, an equal-size hyper-parameter
grid per method, and the RL config of one run.

Everything here is fixed before any run (the report lists it): the settings, the grids, which
grid point is each method's *headline* (the reference values of the paper's toy, scaled to this
toy), the budgets.  Budgets are equal in samples drawn: a RePULSe step draws N samples from p
and N from q, a baseline step N from p, so RePULSe gets half the policy updates (paper §4.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("reinforce", "reward_transform", "p_proposal", "repulse")
LABELS = {
    "reinforce": "REINFORCE (RLOO)",
    "reward_transform": "reward-transformed REINFORCE",
    "p_proposal": "p-proposal",
    "repulse": "RePULSe",
}


@dataclass(frozen=True)
class Setting:
    """One toy setting: KL coefficient, policy learning rate, budget and grids."""

    name: str
    title: str
    kl_coef: float
    lr: float  # p's learning rate (REINFORCE sweeps it; the others use this one)
    samples_per_step: int  # N: samples per prompt from p (and from q) in one step
    evals: int  # exact evaluations after the one before training (fit steps)
    baseline_steps_per_eval: int  # policy updates between evaluations (RePULSe: half)
    proposal_lr: float
    grids: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    headline: dict[str, int] = field(default_factory=dict)  # method -> index into its grid

    def steps_per_eval(self, method: str) -> int:
        return self.baseline_steps_per_eval // (2 if method == "repulse" else 1)

    def samples(self, method: str) -> int:
        """Samples drawn by one run of ``method`` (the same for every method)."""
        per_step = self.samples_per_step * (2 if method == "repulse" else 1)
        return per_step * self.steps_per_eval(method) * self.evals


def hp_label(method: str, hp: dict[str, float]) -> str:
    """``lr=1e-3`` / ``a=1, b=0.5`` / ``beta=10, alpha=1``: a grid point, in the report's words."""
    return ", ".join(f"{k}={v:.2g}" for k, v in hp.items())


def settings(quick: bool = False) -> dict[str, Setting]:
    """The two settings of the paper's toy (§4.2 without KL, App. E.1 with KL).

    Grids (4 points per method in both settings) are centred on the paper's toy values where
    the scale carries over (β = 10 and 1, transform r − a·exp(−b·r) with a ∈ {1, 10}, RePULSe's
    q learning rate 3x the policy's) and span a factor ~10 in each method's knobs.  α is on the
    code's scale (N × the paper's α, spec §1.4): its reference values were 0.01 (KL 0) and 100
    (KL 10) for N = 500; this toy's rewards span ~20 rather than ~10, so its α grid spans 0.1-10
    in both settings, which covers "the negative term as strong as one sample's advantage".
    """
    n = 16 if quick else 32
    evals = 2 if quick else 10
    per_eval = 4 if quick else 12
    common = dict(samples_per_step=n, evals=evals, baseline_steps_per_eval=per_eval)
    lr = 1e-3
    grids = {
        "reinforce": [{"lr": lr / 3}, {"lr": lr}, {"lr": 3 * lr}, {"lr": 10 * lr}],
        "reward_transform": [{"a": a, "b": b} for a in (1.0, 10.0) for b in (0.5, 1.0)],
        "p_proposal": [{"alpha": a} for a in (0.1, 0.3, 1.0, 3.0)],
        "repulse": [{"beta": b, "alpha": a} for b in (1.0, 10.0) for a in (1.0, 10.0)],
    }
    headline = {"reinforce": 1, "reward_transform": 1, "p_proposal": 2, "repulse": 2}
    return {
        "kl0": Setting(
            "kl0", "no KL penalty (paper Figs. 1-2)", 0.0, lr, proposal_lr=3 * lr, grids=grids,
            headline=headline, **common,
        ),
        "kl": Setting(
            "kl", "KL penalty (paper App. E.1)", 1.0, lr, proposal_lr=3 * lr, grids=grids,
            headline=headline, **common,
        ),
    }  # fmt: skip


@dataclass(frozen=True)
class RunSpec:
    """One run: a setting, a method, a grid point and a seed."""

    setting: str
    method: str
    index: int  # grid index
    hp: dict[str, float]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.method}/h{self.index}/seed{self.seed}"


def all_runs(sets: dict[str, Setting], seeds: list[int], only_headline: bool = False) -> list[RunSpec]:
    out = []
    for s in sets.values():
        for m in METHODS:
            for i, hp in enumerate(s.grids[m]):
                if only_headline and i != s.headline[m]:
                    continue
                out += [RunSpec(s.name, m, i, hp, seed) for seed in seeds]
    return out


def rl_config(
    prompt_file: Path, lm: Path, rm: Path, out_dir: Path, setting: Setting, method: str, hp: dict[str, float],
    seed: int, eta: float, bad_words: list[str],
):  # fmt: skip
    """The RLConfig of one run (spec §4.2, scaled to 2 CPU cores): one prompt, two-token responses,
    N samples per step, RLOO baseline, constant lr, Adam(0.9, 0.999), an exact P(bad) before
    training and after every ``steps_per_eval`` steps."""
    from repulse.config.sections import RLConfig
    from repulse.workflows.demo.world import reward_config

    cfg = RLConfig()
    cfg.actor.model_name_or_path = str(lm)
    cfg.reward = reward_config(rm)
    cfg.data.prompt_dataset = str(prompt_file)
    cfg.rollout.batch_size = 1
    cfg.rollout.n_samples_per_prompt = setting.samples_per_step
    cfg.rollout.micro_batch_size = 256
    cfg.rollout.max_new_tokens = 2
    cfg.train.micro_batch_size = setting.samples_per_step
    cfg.train.seed = seed
    cfg.algo.kl.init_coef = setting.kl_coef
    cfg.actor.adam.lr = hp.get("lr", setting.lr)
    cfg.actor.adam.betas = [0.9, 0.999]
    cfg.actor.optim.lr_scheduler = "constant"
    cfg.actor.optim.lr_warmup_ratio = 0.0
    rp = cfg.repulse
    rp.method = method
    rp.analytic_bad_word_calc = True
    rp.bad_words = list(bad_words)
    rp.bad_threshold = eta
    rp.fit_steps = setting.evals
    cfg.train.num_episodes = setting.steps_per_eval(method)
    # each method is given only the fields it reads (the others are refused as silently ignored)
    if method == "repulse":
        rp.proposal_lr = setting.proposal_lr
    if method in ("p_proposal", "repulse"):
        rp.beta = hp.get("beta", 10.0)
        rp.alpha = hp["alpha"]
    if method == "reward_transform":
        rp.reward_transform, rp.transform_a, rp.transform_b = "minus_alpha_exp_beta_r", hp["a"], hp["b"]
    cfg.ckpt.output_dir = str(out_dir)
    cfg.logger.progress_bar = False
    return cfg


def config_summary(setting: Setting) -> dict[str, Any]:
    """The setting as the report lists it."""
    return {
        "kl_coef": setting.kl_coef,
        "lr": setting.lr,
        "proposal_lr": setting.proposal_lr,
        "samples_per_step": setting.samples_per_step,
        "evals": setting.evals,
        "baseline_steps_per_eval": setting.baseline_steps_per_eval,
        "grids": setting.grids,
        "headline": {m: setting.grids[m][i] for m, i in setting.headline.items()},
    }
