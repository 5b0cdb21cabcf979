"""``repulse score``: a reward for every (input, output) row of a data set, then a post-processor.

    repulse score --data.dataset gen.jsonl --reward.model_name_or_path RM \\
        --score.post_processor rs --output.path best.jsonl

The seed's ``openrlhf.cli.batch_inference --eval_task rm`` flags work too (``--pretrain`` is the reward
model there, ``--post_processor``, ``--normalize_reward``, ``--reward_template``, ``--output_path``).

Reward sources are those of ``repulse rl``: reward models (``--reward.model_name_or_path``, a comma
list), Python files with ``reward_func`` and reward servers (``--reward.remote_url``), several combined
by ``--reward.reduction``. Each row is scored on ``input`` + ``output`` (``--data.input_key`` /
``--data.output_key``: a ``repulse generate`` output as it is). With ``--data.output_key none`` and
``--data.apply_chat_template`` the input is a conversation: the text up to its last assistant turn
(with the generation prompt) is the input, that turn the output, as the seed's conditional-SFT
recipe reads a preference data set's ``chosen`` conversations.

Output rows: ``{"input", "output", "reward", ...the row's other keys}``, then ``--reward.cap``,
``--reward.normalize_enable`` (z-scores over the whole file) and ``--score.post_processor``
(``repulse.workflows.postprocess``). Chunked and resumable like ``repulse generate``; under
``torchrun`` each rank scores its share of the chunks.
"""

from __future__ import annotations

from typing import Any

from repulse.config import parse_config
from repulse.config.schema import to_dict
from repulse.config.sections import ScoreConfig
from repulse.data.templates import check_input_template
from repulse.errors import UserError
from repulse.workflows.generate import check_post_processing


def validate(cfg: ScoreConfig) -> None:
    if not cfg.data.dataset:
        raise UserError("--data.dataset is required: the rows to score (e.g. a repulse generate output).")
    if not cfg.output.path:
        raise UserError("--output.path (seed: --output_path) is required: the JSON-lines file to write.")
    if cfg.data.output_key is None and not cfg.data.apply_chat_template:
        raise UserError(
            "--data.output_key none reads the response from a conversation's last assistant turn, which needs "
            "--data.apply_chat_template; or name the response key with --data.output_key."
        )
    if cfg.data.tokenizer and not cfg.data.apply_chat_template:
        raise UserError(
            "--data.tokenizer renders chat conversations: it is used with --data.apply_chat_template only."
        )
    if cfg.data.tokenizer_chat_template and not cfg.data.apply_chat_template:
        raise UserError(
            "--data.tokenizer_chat_template is used with --data.apply_chat_template only (conversations)."
        )
    if cfg.data.input_template and cfg.data.apply_chat_template:
        raise UserError(
            "--data.input_template and --data.apply_chat_template both render the input: choose one."
        )
    check_input_template(cfg.data.input_template)
    check_post_processing(cfg, None, "score")


def main(argv: list[str]) -> int:
    cfg = parse_config("score", ScoreConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


def _missing_output(row: dict, index: int, key: str, dataset: str) -> UserError:
    from repulse.data.base import row_label

    keys = ", ".join(repr(k) for k in list(row)[:12])
    return UserError(
        f"--data.dataset {dataset}: {row_label(row, index)} has no key '{key}', the response to score "
        f"(--data.output_key {key}); its keys are: {keys}. Score a repulse generate output (it has 'input' and "
        "'output'), name the response key with --data.output_key, or, for chat conversations whose last "
        "assistant turn is the response, use --data.output_key none with --data.apply_chat_template."
    )


def scoring_rows(cfg: ScoreConfig, rows: list[dict], tokenizer: Any | None) -> list[dict]:
    """``{"input", "output", ...other keys}`` for every row (the texts the reward sources score)."""
    from repulse.data.base import get_field, row_label, split_last_assistant
    from repulse.data.templates import as_messages, check_input_template, render_chat

    d = cfg.data
    template = check_input_template(d.input_template)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(
                f"--data.dataset {d.dataset}: {row_label(row, i)} is not a record with named fields."
            )
        value = get_field(row, d.input_key, "--data.input_key", i)
        what = f"{row_label(row, i)} ('{d.input_key}')"
        if d.output_key is None:
            prompt_msgs, answer = split_last_assistant(
                as_messages(value, what), row_label(row, i), "--data.input_key"
            )
            text = render_chat(tokenizer, prompt_msgs, add_generation_prompt=True) if prompt_msgs else ""
            full = render_chat(tokenizer, prompt_msgs + answer, add_generation_prompt=False)
            if not full.startswith(text):
                raise UserError(
                    f"{what}: the chat template renders the conversation's start differently once the answer "
                    "follows, so input and output cannot be split as text; give the response a key of its own "
                    "(--data.output_key)."
                )
            response = full[len(text) :].rstrip()
        else:
            if d.output_key not in row:
                raise _missing_output(row, i, d.output_key, d.dataset)
            response = get_field(row, d.output_key, "--data.output_key", i)
            if d.apply_chat_template:
                msgs = as_messages(value, what)
                text = render_chat(tokenizer, msgs, add_generation_prompt=True)
            elif isinstance(value, str):
                text = template.format(value) if template else value
            else:
                raise UserError(
                    f"{what} is a {type(value).__name__}, not text; for chat messages add --data.apply_chat_template."
                )
            if not isinstance(response, str):
                raise UserError(
                    f"{row_label(row, i)}: '{d.output_key}' (--data.output_key) is a {type(response).__name__}, "
                    "not text."
                )
        extra = {
            k: v for k, v in row.items() if k not in {d.input_key, d.output_key, "input", "output", "reward"}
        }
        label = get_field(row, d.label_key, "--data.label_key", i, allow_none=True) if d.label_key else None
        out.append({"input": text, "output": response, **extra, "_label": label})
    return out


def run(cfg: ScoreConfig) -> int:
    import time

    from repulse.data.sources import load_mixture
    from repulse.engine.dist import barrier, init_distributed
    from repulse.models.loading import load_tokenizer
    from repulse.run.start import on_rank0
    from repulse.workflows.chunks import ChunkStore, fingerprint, model_identity
    from repulse.workflows.inference import Scorer
    from repulse.workflows.postprocess import post_process, summary

    validate(cfg)
    rank, world, _, device = init_distributed()
    t0 = time.perf_counter()
    d = cfg.data
    tokenizer = None
    if d.apply_chat_template:
        first_rm = (cfg.reward.model_name_or_path or "").split(",")[0].strip()
        path = d.tokenizer or first_rm
        if not path:
            raise UserError(
                "--data.apply_chat_template needs a tokenizer with a chat template: --data.tokenizer DIR (the "
                "default is the first reward model's, and no --reward.model_name_or_path is given)."
            )
        tokenizer = load_tokenizer(path, chat_template=d.tokenizer_chat_template)
    raw = load_mixture(
        d.dataset,
        d.dataset_probs,
        split=d.dataset_split,
        max_samples=d.max_samples,
        seed=d.seed,
        flag="--data.dataset",
    )
    rows = scoring_rows(cfg, raw, tokenizer)
    micro = cfg.score.micro_batch_size
    chunks = [rows[s : s + micro] for s in range(0, len(rows), micro)]
    key = fingerprint(
        "score",
        rows,
        to_dict(cfg.reward),
        model_identity(cfg.reward.model_name_or_path),
        micro,
    )
    store = ChunkStore(cfg.output.path, key, len(chunks), rank, world, "--output.path")
    pending = store.prepare()
    if pending:
        scorer = Scorer(cfg.reward, device, micro)
        for k in store.mine(pending):
            if k is None:
                continue  # scoring needs no lock-step between processes
            chunk = chunks[k]
            rewards = scorer(
                [r["input"] for r in chunk], [r["output"] for r in chunk], [r["_label"] for r in chunk]
            )
            store.write(
                k,
                [
                    {**{a: b for a, b in r.items() if a != "_label"}, "reward": x}
                    for r, x in zip(chunk, rewards)
                ],
            )
    barrier()  # every chunk is written

    def assemble() -> None:  # rank 0; an error there (e.g. iter_dpo finds no pair) stops every rank
        scored = store.read_all([len(c) for c in chunks])
        stats = summary(scored)
        out = post_process(
            scored,
            cfg.score.post_processor,
            cfg.reward.normalize_enable,
            cfg.score.reward_template,
            cfg.reward.cap,
        )
        store.finish(out)
        print(
            f"[repulse] score: {len(scored)} rows, mean reward {stats['reward_mean']:.4g} -> {len(out)} rows "
            f"({cfg.score.post_processor}) in {cfg.output.path} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )

    on_rank0(assemble)
    return 0
