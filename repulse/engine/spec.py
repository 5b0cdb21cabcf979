"""Build an :class:`~repulse.engine.base.OptimSpec` from the config sections.

The engine floor does not read config trees; trainers call this once with the
sections that belong to the trained model (``cfg.adam``/``cfg.muon``/``cfg.optim`` for
offline methods, ``cfg.actor.*`` or ``cfg.critic.*`` in RL).
"""

from __future__ import annotations

from typing import Any

from repulse.engine.base import OptimSpec
from repulse.engine.optim import OPTIMIZERS, SCHEDULERS
from repulse.errors import UserError


def optim_spec_from(adam: Any, muon: Any, optim: Any, total_steps: int) -> OptimSpec:
    """Validate and combine ``AdamSection``, ``MuonSection`` and ``OptimSection``.

    Validation happens here, before any model is built, so a typo in a flag fails fast
    with the flag's name.
    """
    if optim.name not in OPTIMIZERS:
        raise UserError(f"--optim.name {optim.name!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}.")
    if optim.lr_scheduler not in SCHEDULERS:
        raise UserError(
            f"--optim.lr_scheduler {optim.lr_scheduler!r} is unknown; choose one of: {', '.join(SCHEDULERS)}."
        )
    betas = tuple(float(b) for b in adam.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise UserError(f"--adam.betas needs two numbers in [0, 1), got {list(adam.betas)}.")
    if not 0.0 <= optim.lr_warmup_ratio <= 1.0:
        raise UserError(f"--optim.lr_warmup_ratio must be in [0, 1], got {optim.lr_warmup_ratio}.")
    if optim.max_norm < 0:
        raise UserError(f"--optim.max_norm must be >= 0 (0 disables clipping), got {optim.max_norm}.")
    if muon.ns_steps < 1 or muon.ns_steps >= 100:
        raise UserError(f"--muon.ns_steps must be in [1, 99], got {muon.ns_steps}.")
    return OptimSpec(
        name=optim.name,
        lr=float(adam.lr),
        betas=(betas[0], betas[1]),
        eps=float(adam.eps),
        weight_decay=float(adam.weight_decay),
        muon_lr=float(muon.lr),
        muon_momentum=float(muon.momentum),
        muon_nesterov=bool(muon.nesterov),
        muon_ns_steps=int(muon.ns_steps),
        lr_scheduler=optim.lr_scheduler,
        warmup_ratio=float(optim.lr_warmup_ratio),
        min_lr_ratio=float(optim.min_lr_ratio),
        max_norm=float(optim.max_norm),
        total_steps=max(1, int(total_steps)),
    )
