"""Optimizers and learning-rate schedules shared by every engine backend.

Every backend builds its optimizer and scheduler here, so AdamW/Muon and the lr curve
are the same whatever runs the model (one process, FSDP2, DeepSpeed).

AdamW: two parameter groups, weight decay on matrices only (biases and norm weights,
all tensors with fewer than 2 dims, get none).

Muon: :class:`MuonAdamW`, one optimizer object with Muon groups for the 2-D hidden
weight matrices (``muon_lr``) and AdamW groups for everything else (embeddings, the
LM / value head, norms, biases, at ``lr``). One object, not two, because the engines,
the scheduler and torch.distributed.checkpoint all expect a single optimizer.

Its Muon update is written here rather than taken from ``torch.optim.Muon`` because
under FSDP2 each rank holds a row shard of every matrix, and Newton-Schulz needs the
whole matrix: for a DTensor parameter the momentum stays sharded (it is elementwise)
and only the orthogonalisation runs on the gathered matrix, then is sliced back to
the local shard. On plain tensors the update is the same, operation for operation, as
``torch.optim.Muon`` (``adjust_lr_fn="original"``, bf16 Newton-Schulz); a test pins
that equality where torch has Muon.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from repulse.engine.base import OptimSpec
from repulse.errors import UserError

# Newton-Schulz quintic coefficients (Keller Jordan's Muon; same as torch.optim.Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7

# Module names (anywhere on a parameter's path) of heads that stay on AdamW under Muon even
# though their weight is 2-D: output layers are not "hidden" matrices.
HEAD_NAMES = ("lm_head", "score", "value_head", "classifier", "embed_out")

SCHEDULERS = ("cosine_with_min_lr", "constant", "linear")
OPTIMIZERS = ("adam", "muon")


# --------------------------------------------------------------------------- grouping


def _named_trainable(
    params_or_model: nn.Module | Iterable[Any],
) -> tuple[list[tuple[str, nn.Parameter]], set[int]]:
    """(name, param) of every trainable parameter, plus ids of embedding/output weights.

    A plain iterable of parameters gets positional names and no embedding ids (then
    only the shape rule separates Muon from AdamW parameters).
    """
    if isinstance(params_or_model, nn.Module):
        named = [(n, p) for n, p in params_or_model.named_parameters() if p.requires_grad]
        special: set[int] = set()
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            fn = getattr(params_or_model, getter, None)
            try:
                mod = fn() if callable(fn) else None
            except (NotImplementedError, AttributeError):
                mod = None
            if isinstance(mod, nn.Module):
                special.update(id(p) for p in mod.parameters())
        for mod in params_or_model.modules():
            if isinstance(mod, nn.Embedding):
                special.update(id(p) for p in mod.parameters())
        return named, special
    named = []
    for i, item in enumerate(params_or_model):
        if isinstance(item, tuple):
            named.append((str(item[0]), item[1]))
        else:
            named.append((f"param_{i}", item))
    return [(n, p) for n, p in named if p.requires_grad], set()


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm weights (every tensor with < 2 dims) are not decayed."""
    return param.ndim < 2 or name.endswith(".bias")


def is_muon_param(name: str, param: torch.Tensor, special_ids: set[int]) -> bool:
    """A 2-D hidden weight matrix: not an embedding, not an output head, not a vector."""
    if param.ndim != 2 or min(param.shape) < 2 or id(param) in special_ids:
        return False
    # Any module on the path named like a head (PEFT nests it: "score.modules_to_save.default.weight").
    return not any(part in HEAD_NAMES for part in name.split(".")[:-1])


def param_groups(params_or_model: nn.Module | Iterable[Any], spec: OptimSpec) -> list[dict[str, Any]]:
    """The optimizer's parameter groups for ``spec.name``.

    Every group carries ``use_muon`` (torch optimizers keep extra group keys), which
    :func:`current_lrs` reads to report the AdamW and the Muon learning rate.
    """
    named, special = _named_trainable(params_or_model)
    if not named:
        raise UserError("the model has no trainable parameters (requires_grad=False everywhere).")
    decay, no_decay, muon = [], [], []
    for name, p in named:
        if spec.name == "muon" and is_muon_param(name, p, special):
            muon.append(p)
        elif no_weight_decay(name, p):
            no_decay.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "lr": spec.lr, "weight_decay": spec.weight_decay, "use_muon": False},
        {"params": no_decay, "lr": spec.lr, "weight_decay": 0.0, "use_muon": False},
    ]
    if spec.name == "muon":
        groups.append(
            {"params": muon, "lr": spec.muon_lr, "weight_decay": spec.weight_decay, "use_muon": True}
        )
    # Empty groups are harmless for torch optimizers but trip DeepSpeed's ZeRO flattening.
    return [g for g in groups if g["params"]]


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"lr": AdamW-group lr}`` plus ``"muon_lr"`` when a Muon group exists (for logging)."""
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        key = "muon_lr" if group.get("use_muon", False) else "lr"
        out.setdefault(key, float(group["lr"]))
    if "lr" not in out:  # Muon only (e.g. LoRA matrices): report its lr as "lr" too
        out["lr"] = out["muon_lr"]
    return out


# --------------------------------------------------------------------------- Muon


def zeropower_via_newtonschulz(g: torch.Tensor, steps: int, eps: float = NS_EPS) -> torch.Tensor:
    """Approximately orthogonalise a 2-D matrix (U S V^T -> U S' V^T with S' near 1).

    Quintic Newton-Schulz iteration X <- aX + (bA + cA^2)X with A = X X^T, run in
    bf16 after scaling X to unit Frobenius norm (so its spectral norm is <= 1). The
    iteration works on the wide orientation (rows <= cols) so A is the smaller Gram
    matrix. Identical, operation for operation, to ``torch.optim.Muon``'s.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def _orthogonalise(update: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton-Schulz on the full matrix, returned in the same layout as ``update``.

    A DTensor (FSDP2 shard) is gathered, orthogonalised redundantly on every rank (all
    ranks get identical results), and the local shard is taken back without
    communication (Replicate -> Shard is a local slice).
    """
    try:
        from torch.distributed.tensor import DTensor, Replicate
    except ImportError:  # pragma: no cover - very old torch
        DTensor = None  # noqa: N806
    if DTensor is not None and isinstance(update, DTensor):
        placements = update.placements
        full = update.redistribute(placements=[Replicate()] * len(placements)).to_local()
        ortho = zeropower_via_newtonschulz(full, steps)
        rep = DTensor.from_local(ortho, update.device_mesh, [Replicate()] * len(placements), run_check=False)
        return rep.redistribute(placements=placements)
    return zeropower_via_newtonschulz(update, steps)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with ``use_muon=True``, AdamW for the others, in one optimizer.

    Muon (per matrix W with gradient G, momentum mu, step size lr):
        B <- mu B + (1 - mu) G                     (momentum buffer, lerp form)
        U <- (1 - mu) G + mu B if nesterov else B
        O <- NS_k(U)                               (Newton-Schulz, k = ns_steps)
        W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) O
    AdamW (decoupled weight decay, bias-corrected), as torch.optim.AdamW:
        W <- W (1 - lr wd);  m <- lerp(m, G, 1 - b1);  v <- b2 v + (1 - b2) G^2
        W <- W - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
    ):
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            use_muon=False,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                if bad:
                    raise ValueError(f"Muon groups take 2-D parameters only, got shapes {bad}")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - mu)
            update = g.lerp(buf, mu) if group["nesterov"] else buf
            ortho = _orthogonalise(update, group["ns_steps"])
            rows, cols = p.shape[:2]
            adjusted = lr * math.sqrt(max(1.0, rows / cols))
            p.mul_(1 - lr * wd)
            p.add_(ortho, alpha=-adjusted)

    def _adamw_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = float(state["step"].item())
            m, v = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bias1 = 1 - beta1**t
            bias2_sqrt = (1 - beta2**t) ** 0.5  # ** 0.5, not math.sqrt: bitwise as torch's AdamW
            denom = (v.sqrt() / bias2_sqrt).add_(eps)
            p.addcdiv_(m, denom, value=-lr / bias1)


def _fusable(groups: list[dict[str, Any]]) -> bool | None:
    """Use torch's fused AdamW kernel where it exists (CPU and CUDA floating-point parameters).

    Same update rule as the per-tensor loop (equal within float rounding), one kernel per
    parameter instead of a dozen element-wise ops: ~3.5x faster optimizer steps on CPU and the
    recommended path on CUDA. Anything else (e.g. meta or XPU tensors) keeps torch's default.
    """
    params = [p for g in groups for p in g["params"]]
    ok = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if ok else None


def build_optimizer(params_or_model: nn.Module | Iterable[Any], spec: OptimSpec) -> torch.optim.Optimizer:
    """AdamW (``spec.name == "adam"``) or Muon + AdamW (``"muon"``) over the trainable parameters.

    Pass the model (not ``model.parameters()``) so embeddings and heads can be told
    apart from hidden matrices; for FSDP2 pass it *after* ``fully_shard``.
    """
    if spec.name not in OPTIMIZERS:
        raise UserError(f"--optim.name {spec.name!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}.")
    groups = param_groups(params_or_model, spec)
    if spec.name == "adam":
        return torch.optim.AdamW(
            groups,
            lr=spec.lr,
            betas=tuple(spec.betas),
            eps=spec.eps,
            weight_decay=0.0,
            fused=_fusable(groups),
        )
    return MuonAdamW(
        groups,
        lr=spec.lr,
        betas=tuple(spec.betas),
        eps=spec.eps,
        weight_decay=spec.weight_decay,
        momentum=spec.muon_momentum,
        nesterov=spec.muon_nesterov,
        ns_steps=spec.muon_ns_steps,
    )


# --------------------------------------------------------------------------- schedules


def warmup_steps(spec: OptimSpec) -> int:
    """ceil(warmup_ratio * total_steps): the number of steps with a rising lr."""
    return int(math.ceil(spec.warmup_ratio * spec.total_steps))


def lr_factor(name: str, step: int, total: int, warmup: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for the optimizer step with index ``step`` (0-based).

    Warm-up (all schedules), for step < W:  step / W   (so the first step has lr 0,
    as in Hugging Face's schedules that OpenRLHF uses).
    After warm-up, with progress p = (step - W) / max(1, total - W):
      cosine_with_min_lr:  m + (1 - m) * 0.5 * (1 + cos(pi * min(p, 1)))   (m = min_lr_ratio)
      constant:            1
      linear:              max(0, 1 - p)
    """
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if name == "constant":
        return 1.0
    if name == "linear":
        return max(0.0, 1.0 - progress)
    if name == "cosine_with_min_lr":
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine
    raise UserError(f"--optim.lr_scheduler {name!r} is unknown; choose one of: {', '.join(SCHEDULERS)}.")


class _LrLambda:
    """Picklable lr lambda (a callable object, so the scheduler's state_dict keeps it)."""

    def __init__(self, name: str, total: int, warmup: int, min_lr_ratio: float):
        self.name, self.total, self.warmup, self.min_lr_ratio = name, total, warmup, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(self.name, step, self.total, self.warmup, self.min_lr_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: OptimSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR scaling every group's own peak lr (``lr`` or ``muon_lr``) by :func:`lr_factor`."""
    if spec.lr_scheduler not in SCHEDULERS:
        raise UserError(
            f"--optim.lr_scheduler {spec.lr_scheduler!r} is unknown; choose one of: {', '.join(SCHEDULERS)}."
        )
    fn = _LrLambda(spec.lr_scheduler, max(1, spec.total_steps), warmup_steps(spec), spec.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
