"""Greedy Coordinate Gradient (GCG, Zou et al. 2023): find a suffix that makes a target likely.

The attacked prompt is ``before + suffix + after``: the policy's rendered prompt for the user
message ``goal + suffix`` (chat template or input template), split where the suffix goes. The
objective is the mean negative log-likelihood of the target tokens after it. One step:

1. the gradient of the objective with respect to the one-hot suffix tokens (:meth:`Objective.grad`);
2. for each suffix position, the ``topk`` tokens with the most negative gradient, among the
   allowed ones (:func:`disallowed_token_ids`: special tokens, ids the tokenizer does not
   have, and with ``ascii_only`` every token that does not decode to printable ASCII);
3. ``search_width`` candidates, each a copy of the current suffix with ``n_replace``
   distinct random positions set to a random one of their top-k tokens (:func:`sample_candidates`);
4. with ``filter_ids``, candidates whose decoded text does not re-encode to the same ids are
   dropped (:func:`filter_ids`): the suffix must survive being sent as text;
5. the objective of every candidate, ``batch_size`` per forward (:meth:`Objective.losses`);
6. the best candidate becomes the current suffix (``buffer_size`` 0), or enters a buffer of
   the K best suffixes seen and the next step starts from the buffer's best (``buffer_size``
   K > 0). The suffix with the lowest loss over all steps (the initial one included) is returned.

Everything random draws from one ``torch.Generator`` seeded by the caller, on the CPU, so a
run is reproducible. Pure algorithm: no files, no config parsing (see ``repulse.workflows.gcg``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from repulse.errors import UserError

if TYPE_CHECKING:
    from repulse.config.sections import GcgSection

__all__ = [
    "AttackPrompt",
    "GcgResult",
    "Objective",
    "build_attack_prompt",
    "disallowed_token_ids",
    "filter_ids",
    "run_gcg",
    "sample_candidates",
    "target_logprob",
]

_MARK = "\x1fREPULSE_GCG_SUFFIX\x1f"


@dataclass(frozen=True)
class AttackPrompt:
    """Token ids of the attacked prompt around the suffix, and of the target."""

    before: list[int]  # rendered prompt up to the suffix (the goal, with any template prefix)
    after: list[int]  # rendered prompt after the suffix (end of the user turn, generation prompt)
    target: list[int]
    plain: list[int]  # the un-attacked prompt (goal only), as the policy sees it in training

    def with_suffix(self, suffix: list[int]) -> list[int]:
        return self.before + list(suffix) + self.after


def build_attack_prompt(
    tokenizer: Any,
    goal: str,
    target: str,
    *,
    apply_chat_template: bool,
    input_template: str | None = None,
    add_space_before_target: bool = False,
) -> AttackPrompt:
    """Render ``goal + <suffix>`` as the policy's prompt and split it at the suffix.

    Tokenised like the RL prompts (``repulse.data.prompts``): chat text carries its own
    special tokens; plain text gets the tokenizer's leading ones (e.g. ``<s>``).
    """
    from repulse.data.templates import encode, render_prompt, special_prefix

    text = render_prompt(tokenizer, goal + _MARK, input_template, apply_chat_template, "the goal")
    if text.count(_MARK) != 1:
        raise UserError(
            "the prompt template does not keep the user message in one piece; cannot place the suffix."
        )
    head, tail = text.split(_MARK)
    prefix = [] if apply_chat_template else special_prefix(tokenizer)
    plain = prefix + encode(tokenizer, render_prompt(tokenizer, goal, input_template, apply_chat_template))
    tgt = encode(tokenizer, (" " + target) if add_space_before_target else target)
    if not tgt:
        raise UserError(f"the target {target!r} has no tokens.")
    return AttackPrompt(prefix + encode(tokenizer, head), encode(tokenizer, tail), tgt, plain)


def disallowed_token_ids(tokenizer: Any, vocab_size: int, ascii_only: bool = True) -> torch.Tensor:
    """Ids a suffix may not use: special tokens, ids past the tokenizer's vocabulary (padded
    embedding rows), and with ``ascii_only`` tokens whose text is empty or not printable ASCII."""
    n = min(vocab_size, len(tokenizer))
    bad = set(range(n, vocab_size))
    bad |= {int(i) for i in getattr(tokenizer, "all_special_ids", []) if 0 <= int(i) < vocab_size}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if tok.special and 0 <= int(i) < vocab_size:
            bad.add(int(i))
    if ascii_only:
        texts = tokenizer.batch_decode([[i] for i in range(n)])
        bad |= {i for i, s in enumerate(texts) if not s or not (s.isascii() and s.isprintable())}
    return torch.tensor(sorted(bad), dtype=torch.long)


def sample_candidates(
    suffix: torch.Tensor,
    grad: torch.Tensor,
    search_width: int,
    topk: int,
    n_replace: int,
    generator: torch.Generator,
    disallowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``search_width`` copies of ``suffix`` [L], each with ``n_replace`` distinct positions
    replaced by one of that position's ``topk`` lowest-gradient allowed tokens (uniformly)."""
    length, vocab = grad.shape
    if not 1 <= n_replace <= length:
        raise UserError(f"--gcg.n_replace {n_replace} must be between 1 and the suffix length {length}.")
    g = grad.detach().float().cpu().clone()
    allowed = vocab
    if disallowed is not None and disallowed.numel():
        g[:, disallowed] = float("inf")
        allowed = vocab - int(disallowed.numel())
    if allowed < 1:
        raise UserError("no token is allowed in the suffix (see --gcg.ascii_only).")
    k = min(topk, allowed)
    top = (-g).topk(k, dim=1).indices  # [L, k]
    positions = torch.rand(search_width, length, generator=generator).argsort(dim=1)[:, :n_replace]
    picks = torch.randint(0, k, (search_width, n_replace), generator=generator)
    new_tokens = top[positions, picks]  # [W, n_replace]
    out = suffix.detach().cpu().repeat(search_width, 1)
    out.scatter_(1, positions, new_tokens)
    return out


def filter_ids(candidates: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """Keep the rows whose decoded text re-encodes (no special tokens added) to the same ids."""
    rows = candidates.tolist()
    texts = tokenizer.batch_decode(rows)
    again = tokenizer(texts, add_special_tokens=False)["input_ids"]
    keep = [i for i, (a, b) in enumerate(zip(rows, again)) if list(a) == list(b)]
    return candidates[torch.tensor(keep, dtype=torch.long)] if keep else candidates[:0]


class Objective:
    """Mean NLL of the target after ``before + suffix + after``, for one prompt.

    Works on embeddings, so the suffix can be a one-hot matrix (for the gradient) or ids.
    With ``prefix_cache`` the key/value cache of ``before`` is computed once and copied into
    each forward; the numbers are the same either way.
    """

    def __init__(self, model: torch.nn.Module, prompt: AttackPrompt, prefix_cache: bool = True):
        self.model = model
        self.embedding = model.get_input_embeddings()
        weight = self.embedding.weight
        self.device, self.dtype = weight.device, weight.dtype

        def emb(ids: list[int]) -> torch.Tensor:
            t = torch.tensor(ids, dtype=torch.long, device=self.device)
            return self.embedding(t)[None].detach()

        self.before, self.after, self.target_emb = emb(prompt.before), emb(prompt.after), emb(prompt.target)
        self.target = torch.tensor(prompt.target, dtype=torch.long, device=self.device)
        self._keep = True
        self.cache = None
        if prefix_cache and prompt.before:
            with torch.no_grad():
                self.cache = model(inputs_embeds=self.before, use_cache=True).past_key_values

    def _logits(self, suffix_emb: torch.Tensor) -> torch.Tensor:
        """Logits at the positions that predict the target tokens, [B, T, V]."""
        b = suffix_emb.shape[0]
        t = self.target.numel()
        parts = [suffix_emb, self.after.expand(b, -1, -1), self.target_emb.expand(b, -1, -1)]
        kwargs: dict[str, Any] = {}
        if self.cache is not None:
            past = copy.deepcopy(self.cache)
            if b > 1:
                past.batch_repeat_interleave(b)
            kwargs = {"past_key_values": past, "use_cache": True}
        else:
            parts.insert(0, self.before.expand(b, -1, -1))
        embeds = torch.cat(parts, 1)
        if self._keep:  # only the last t + 1 positions' logits (no [B, S, V] tensor for large vocabularies)
            try:
                return self.model(inputs_embeds=embeds, logits_to_keep=t + 1, **kwargs).logits[:, :-1]
            except TypeError:  # a model class without logits_to_keep
                self._keep = False
                if self.cache is not None:
                    return self._logits(suffix_emb)
        return self.model(inputs_embeds=embeds, **kwargs).logits[:, -t - 1 : -1]

    def loss_of_embeds(self, suffix_emb: torch.Tensor) -> torch.Tensor:
        """Per-row mean target NLL for suffix embeddings [B, L, d]."""
        logits = self._logits(suffix_emb)
        if logits.element_size() < 4:  # bf16/fp16: the NLL in fp32 (fp64 stays fp64)
            logits = logits.float()
        nll = F.cross_entropy(
            logits.transpose(1, 2), self.target.expand(logits.shape[0], -1), reduction="none"
        )
        return nll.mean(1)

    def one_hot(self, suffix: torch.Tensor) -> torch.Tensor:
        return F.one_hot(suffix.to(self.device), self.embedding.weight.shape[0]).to(self.dtype)

    def grad(self, suffix: torch.Tensor) -> torch.Tensor:
        """d loss / d one-hot(suffix), [L, V]."""
        x = self.one_hot(suffix).requires_grad_(True)
        loss = self.loss_of_embeds((x @ self.embedding.weight)[None])[0]
        (g,) = torch.autograd.grad(loss, x)
        return g

    @torch.no_grad()
    def losses(self, candidates: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Loss of each candidate suffix [N, L], ``batch_size`` rows per forward; on the CPU."""
        out = []
        for s in range(0, candidates.shape[0], max(1, batch_size)):
            ids = candidates[s : s + batch_size].to(self.device)
            out.append(self.loss_of_embeds(self.embedding(ids)).cpu())
        return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def target_logprob(model: torch.nn.Module, prompt_ids: list[int], target_ids: list[int]) -> float:
    """log p(target | prompt), summed over the target tokens, from token ids."""
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([list(prompt_ids) + list(target_ids)], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids) :, None])
    return float(lp.sum())


@dataclass
class GcgResult:
    suffix_ids: list[int]
    suffix: str
    init_loss: float
    best_loss: float
    step_losses: list[float] = field(default_factory=list)  # the best candidate's loss at each step
    best_losses: list[float] = field(default_factory=list)  # the lowest loss so far, after each step
    n_candidates: list[int] = field(default_factory=list)  # candidates evaluated per step (after filtering)
    buffer: list[tuple[float, list[int]]] = field(default_factory=list)  # buffer_size > 0: the K best


def run_gcg(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: AttackPrompt,
    init_suffix: list[int],
    cfg: GcgSection,
    *,
    seed: int,
    disallowed: torch.Tensor | None = None,
    log: Any = None,
) -> GcgResult:
    """Optimise ``init_suffix`` for ``cfg.steps`` steps (module docstring); ``log(step, loss)`` if given."""
    for name in ("search_width", "topk", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--gcg.{name} must be at least 1.")
    if cfg.buffer_size < 0 or cfg.steps < 0:
        raise UserError("--gcg.buffer_size and --gcg.steps must not be negative.")
    if not init_suffix:
        raise UserError("the initial suffix has no tokens (see --gcg.suffix_init / --gcg.suffix_len).")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    objective = Objective(model, prompt, prefix_cache=cfg.use_prefix_cache)
    current = torch.tensor(init_suffix, dtype=torch.long)
    init_loss = float(objective.losses(current[None], 1)[0])
    best_loss, best = init_loss, current
    buffer: list[tuple[float, torch.Tensor]] = [(init_loss, current)]
    result = GcgResult(list(init_suffix), "", init_loss, init_loss)
    for step in range(cfg.steps):
        grad = objective.grad(current)
        candidates = sample_candidates(
            current, grad, cfg.search_width, cfg.topk, cfg.n_replace, generator, disallowed
        )
        if cfg.filter_ids:
            candidates = filter_ids(candidates, tokenizer)
            if not candidates.shape[0]:
                raise UserError(
                    f"GCG step {step}: no candidate suffix re-tokenises to its own ids; turn off "
                    "--gcg.filter_ids or change --gcg.suffix_init."
                )
        losses = objective.losses(candidates, cfg.batch_size)
        j = int(losses.argmin())
        step_loss, step_ids = float(losses[j]), candidates[j]
        if step_loss < best_loss:
            best_loss, best = step_loss, step_ids
        if cfg.buffer_size == 0:
            current = step_ids
        else:
            if len(buffer) < cfg.buffer_size or step_loss < buffer[-1][0]:
                buffer = sorted([*buffer, (step_loss, step_ids)], key=lambda e: e[0])[: cfg.buffer_size]
            current = buffer[0][1]
        result.step_losses.append(step_loss)
        result.best_losses.append(best_loss)
        result.n_candidates.append(int(candidates.shape[0]))
        if log is not None:
            log(step, step_loss, best_loss)
    if was_training:
        model.train()
    result.suffix_ids = best.tolist()
    result.suffix = tokenizer.decode(result.suffix_ids)
    result.best_loss = best_loss
    if cfg.buffer_size:
        result.buffer = [(loss, ids.tolist()) for loss, ids in buffer]
    return result
