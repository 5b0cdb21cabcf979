"""``repulse generate``: responses to a slice of prompts, written to one JSON-lines file.

    repulse generate --model.model_name_or_path SFT --data.dataset prompts.jsonl \\
        --data.input_template $'User: {}\\nAssistant: ' --rollout.n_samples_per_prompt 4 \\
        --rollout.temperature 0.9 --output.path gen.jsonl

The seed's ``openrlhf.cli.batch_inference --eval_task generate|generate_vllm`` flags work too
(``--pretrain``, ``--best_of_n``, ``--iter``, ``--rollout_batch_size``, ``--output_path``, ...).

Prompts come from any data source; ``--data.iter i`` with ``--data.rollout_batch_size R`` takes
prompts [i·R, (i+1)·R) (the iteration's slice of the seed's loops). Each prompt row becomes n output
rows ``{"input": <the rendered prompt>, "output": <the response>, ...the row's other keys}``; with a
reward source (``--reward.*``) each also gets ``"reward"`` in the same pass, and
``--score.post_processor`` (``rs`` for best-of-n sampling, ``iter_dpo``, ``csft``) is applied to the
whole file.

The work is cut into chunks of ``--rollout.micro_batch_size`` rows; chunk k samples from its own
seeded stream (``--rollout.seed``, ``--data.iter``, k), so its rows do not depend on the number of
processes or on where an earlier run was killed. Under ``torchrun`` each rank generates its share of
the chunks; one file comes out, with every prompt × n exactly once (``repulse.workflows.chunks``).
"""

from __future__ import annotations

from typing import Any

from repulse.config import parse_config
from repulse.config.schema import to_dict
from repulse.config.sections import GenerateConfig, InferEngineSection
from repulse.data.templates import check_input_template
from repulse.errors import UserError, warn_once
from repulse.workflows.inference import (
    check_sampling,
    check_vllm_flags,
    has_reward,
)
from repulse.workflows.postprocess import DEFAULT_REWARD_TEMPLATE, check_post_processor, check_reward_template


def check_post_processing(cfg: Any, n_per_prompt: int | None, command: str) -> None:
    """``--score.*`` checks shared by generate (n known) and score (n read from the file later)."""
    s = cfg.score
    check_post_processor(s.post_processor)
    if s.post_processor == "csft":
        check_reward_template(s.reward_template)
    elif s.reward_template != DEFAULT_REWARD_TEMPLATE:
        raise UserError(
            f"--score.reward_template is used by --score.post_processor csft only (here: {s.post_processor}); "
            "remove it or add --score.post_processor csft."
        )
    if s.post_processor == "iter_dpo" and n_per_prompt is not None and n_per_prompt < 2:
        raise UserError(
            f"--score.post_processor iter_dpo pairs the best and the worst of several responses per prompt, but "
            f"--rollout.n_samples_per_prompt (seed: --best_of_n) is {n_per_prompt}: every prompt would have one "
            "response and no pair. Use --rollout.n_samples_per_prompt 2 or more (with a temperature > 0)."
        )
    if s.post_processor == "rs" and n_per_prompt == 1:
        warn_once(
            "rs_n1",
            "--score.post_processor rs with one response per prompt keeps every response (the best of one).",
        )
    if cfg.reward.normalize_enable and not has_reward(cfg.reward):
        raise UserError("--reward.normalize_enable (seed: --normalize_reward) needs a reward source.")
    if command == "score" and not has_reward(cfg.reward):
        raise UserError(
            "repulse score needs a reward source: --reward.model_name_or_path (reward model dir(s), comma list; "
            "seed: --pretrain) and/or --reward.remote_url (reward server URL(s) or a .py file with reward_func)."
        )


def validate(cfg: GenerateConfig) -> None:
    if not cfg.model.model_name_or_path:
        raise UserError(
            "--model.model_name_or_path (seed: --pretrain) is required: the model that generates."
        )
    if not cfg.data.dataset:
        raise UserError("--data.dataset is required: the prompts.")
    if not cfg.output.path:
        raise UserError("--output.path (seed: --output_path) is required: the JSON-lines file to write.")
    check_slice_flags(cfg.data)
    check_input_template(cfg.data.input_template)
    check_sampling(cfg.rollout)
    check_vllm_flags(cfg.vllm, cfg.rollout.backend)
    if (
        cfg.rollout.backend == "vllm"
        and cfg.engine.attn_implementation != InferEngineSection().attn_implementation
    ):
        raise UserError(
            "--engine.attn_implementation is read by the hf backend only; vLLM picks its own attention kernels."
        )
    if cfg.score.post_processor != "none" and not has_reward(cfg.reward):
        raise UserError(
            f"--score.post_processor {cfg.score.post_processor} needs rewards: give --reward.model_name_or_path "
            "and/or --reward.remote_url to score in the same pass, or run repulse score on the output."
        )
    check_post_processing(cfg, cfg.rollout.n_samples_per_prompt, "generate")


def check_slice_flags(data: Any) -> None:
    if data.iter > 0 and data.rollout_batch_size == -1:
        raise UserError(
            f"--data.iter {data.iter} selects the slice [iter*R, (iter+1)*R) of the prompts, so it needs "
            "--data.rollout_batch_size R (seed: --rollout_batch_size)."
        )


def main(argv: list[str]) -> int:
    cfg = parse_config("generate", GenerateConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


# --------------------------------------------------------------------------- prompts


def prompt_slice(n_rows: int, iter_: int, size: int, dataset: str) -> range:
    """Row indices of slice ``iter_``: [iter·size, (iter+1)·size) ∩ [0, n_rows); ``size`` −1: all rows.

    An empty slice is an error (the loop asked for more iterations than the prompts cover).
    """
    if size == -1:
        return range(n_rows)
    lo, hi = iter_ * size, min((iter_ + 1) * size, n_rows)
    if lo >= n_rows:
        raise UserError(
            f"--data.iter {iter_} with --data.rollout_batch_size {size} selects prompts [{lo}, {lo + size}) of "
            f"--data.dataset {dataset}, which has only {n_rows} prompt(s): the slice is empty. The last "
            f"non-empty slice is --data.iter {max(0, (n_rows - 1) // size)}; add prompts, lower the iteration "
            "or raise --data.rollout_batch_size."
        )
    return range(lo, hi)


def load_prompts(data: Any, tokenizer: Any) -> list[dict]:
    """The slice's prompts: ``{"row", "text", "ids", "question"}`` per kept prompt row, in order.

    ``text`` is the rendered prompt (input template or chat template), ``ids`` its tokens (with the
    tokenizer's leading special tokens for plain text; chat text carries its own). Prompts longer
    than ``--data.prompt_max_len`` tokens are dropped and counted in one warning.
    """
    from repulse.data.base import get_field, row_label
    from repulse.data.sources import load_mixture
    from repulse.data.templates import encode_many, question_text, render_prompt, special_prefix

    rows = load_mixture(
        data.dataset,
        data.dataset_probs,
        split=data.dataset_split,
        max_samples=data.max_samples,
        seed=data.seed,
        flag="--data.dataset",
    )
    picked = prompt_slice(len(rows), data.iter, data.rollout_batch_size, data.dataset)
    template = check_input_template(data.input_template)
    items = []
    for i in picked:
        row = rows[i]
        value = get_field(row, data.input_key, "--data.input_key", i)
        text = render_prompt(
            tokenizer, value, template, data.apply_chat_template, f"{row_label(row, i)} ('{data.input_key}')"
        )
        items.append({"row": row, "text": text, "question": question_text(value)})
    prefix = [] if data.apply_chat_template else special_prefix(tokenizer)
    kept = []
    for item, ids in zip(items, encode_many(tokenizer, [it["text"] for it in items])):
        item["ids"] = prefix + list(ids)
        if data.prompt_max_len is not None and len(item["ids"]) > data.prompt_max_len:
            continue
        kept.append(item)
    if len(kept) < len(items):
        warn_once(
            "generate_prompts_too_long",
            f"{len(items) - len(kept)} of {len(items)} prompts are longer than --data.prompt_max_len "
            f"{data.prompt_max_len} tokens and were dropped.",
        )
    if not kept:
        raise UserError(
            f"every one of the {len(items)} prompts is longer than --data.prompt_max_len {data.prompt_max_len} "
            "tokens; raise it."
        )
    return kept


def output_row(item: dict, input_key: str, response: str) -> dict:
    """``input`` (rendered prompt) and ``output`` first, then the prompt row's other keys."""
    extra = {k: v for k, v in item["row"].items() if k not in {input_key, "input", "output"}}
    return {"input": item["text"], "output": response, **extra}


def check_length(policy: str, longest_prompt: int, max_new_tokens: int) -> None:
    """Prompt + response must fit the positions the model reads (else decoding fails mid-run)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(policy)
    except (OSError, ValueError):
        return  # the model loader reports an unreadable model with its own message
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if isinstance(limit, int) and longest_prompt + max_new_tokens > limit:
        raise UserError(
            f"the longest prompt has {longest_prompt} tokens and --rollout.max_new_tokens (seed: --max_new_tokens) "
            f"is {max_new_tokens}: together more than the {limit} positions {policy} reads. Lower "
            "--rollout.max_new_tokens, or drop long prompts with --data.prompt_max_len."
        )


def chunk_seed(seed: int, iter_: int, k: int) -> int:
    """The sampling seed of chunk ``k``: a 31-bit hash of (seed, iter, k)."""
    import hashlib

    digest = hashlib.sha256(f"repulse-generate:{seed}:{iter_}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# --------------------------------------------------------------------------- the run


def run(cfg: GenerateConfig) -> int:
    import time

    from repulse.engine.dist import barrier, init_distributed
    from repulse.models.loading import load_tokenizer
    from repulse.run.start import on_rank0
    from repulse.workflows.chunks import ChunkStore, fingerprint, model_identity
    from repulse.workflows.inference import (
        Scorer,
        build_rollout_engine,
        decode_responses,
        sampling_params,
    )
    from repulse.workflows.postprocess import post_process, summary

    validate(cfg)
    rank, world, _, device = init_distributed()
    t0 = time.perf_counter()
    policy = cfg.model.model_name_or_path
    tok = load_tokenizer(policy, chat_template=cfg.data.tokenizer_chat_template, padding_side="left")
    prompts = load_prompts(cfg.data, tok)
    check_length(policy, max(len(it["ids"]) for it in prompts), cfg.rollout.max_new_tokens)
    n = cfg.rollout.n_samples_per_prompt
    per_chunk = max(1, cfg.rollout.micro_batch_size // n)
    chunks = [prompts[s : s + per_chunk] for s in range(0, len(prompts), per_chunk)]
    key = fingerprint(
        "generate",
        model_identity(policy),
        [it["ids"] for it in prompts],
        [output_row(it, cfg.data.input_key, "") for it in prompts],
        to_dict(cfg.rollout),
        to_dict(cfg.engine),
        to_dict(cfg.vllm) if cfg.rollout.backend == "vllm" else None,
        to_dict(cfg.reward) if has_reward(cfg.reward) else None,
        model_identity(cfg.reward.model_name_or_path) if has_reward(cfg.reward) else None,
        cfg.data.iter,
    )
    store = ChunkStore(cfg.output.path, key, len(chunks), rank, world, "--output.path")
    pending = store.prepare()
    if pending:
        engine = build_rollout_engine(policy, tok, cfg.rollout, cfg.engine, cfg.vllm, device)
        scorer = Scorer(cfg.reward, device, cfg.score.micro_batch_size) if has_reward(cfg.reward) else None
        for k in store.mine(pending):
            items = chunks[k if k is not None else 0]  # None: a padding call whose rows are dropped
            params = sampling_params(cfg.rollout, chunk_seed(cfg.rollout.seed, cfg.data.iter, k or 0))
            samples = engine.generate([it["ids"] for it in items], n, params)
            if k is None:
                continue
            responses = decode_responses(tok, samples)
            owners = [items[int(j)] for j in samples.prompt_index]
            rows = [output_row(it, cfg.data.input_key, resp) for it, resp in zip(owners, responses)]
            if scorer is not None:
                rewards = scorer(
                    [it["text"] for it in owners], responses, questions=[it["question"] for it in owners]
                )
                for row, r in zip(rows, rewards):
                    row["reward"] = r
            store.write(k, rows)
    barrier()  # every chunk is written

    def assemble() -> None:  # rank 0; an error there (e.g. iter_dpo finds no pair) stops every rank
        rows = store.read_all([len(c) * n for c in chunks])
        if has_reward(cfg.reward):
            stats = summary(rows)
            rows = post_process(
                rows,
                cfg.score.post_processor,
                cfg.reward.normalize_enable,
                cfg.score.reward_template,
                cfg.reward.cap,
            )
        store.finish(rows)
        took = time.perf_counter() - t0
        line = f"[repulse] generate: {len(prompts)} prompts x {n} -> {len(rows)} rows in {cfg.output.path} ({took:.1f} s)"
        if has_reward(cfg.reward):
            line += f"; mean reward {stats['reward_mean']:.4g}"
        print(line, flush=True)

    on_rank0(assemble)
    return 0
