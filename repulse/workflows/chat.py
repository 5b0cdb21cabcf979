"""``repulse chat``: talk to a trained model in the terminal (or through a pipe).

    repulse chat --model.model_name_or_path runs/dpo --data.apply_chat_template \\
        --reward.model_name_or_path runs/rm

Each line read from stdin is one user turn; the reply is printed on one line of stdout (after
``assistant: ``). With the chat template the whole conversation (and ``--chat.system_prompt``) is
rendered each turn; with ``--data.input_template`` (or none) each turn is the template over the
user's text, appended to the earlier turns and replies. The oldest turns are dropped when the prompt
would exceed ``--chat.max_len`` tokens. ``--reward.model_name_or_path`` (seed: ``--reward``) or
``--reward.remote_url`` prints ``reward: <score>`` of each reply (the reward sources of ``repulse rl``,
scoring the rendered conversation and the reply). Typing ``clear`` starts a new conversation;
``exit`` or the end of input ends it. The seed's ``openrlhf.cli.interactive_chat`` flags work too
(``--pretrain``, ``--apply_chat_template``, ``--greedy_sampling``, ``--max_len``, ...).

Sampling uses the ``--rollout.*`` options of ``repulse generate``; turn t samples from the seeded
stream (``--rollout.seed``, t), so a piped session is reproducible.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from repulse.config import parse_config
from repulse.config.sections import ChatConfig
from repulse.data.templates import check_input_template
from repulse.errors import UserError
from repulse.workflows.inference import check_sampling, has_reward


def validate(cfg: ChatConfig) -> None:
    if not cfg.model.model_name_or_path:
        raise UserError("--model.model_name_or_path (seed: --pretrain) is required: the model to talk to.")
    check_input_template(cfg.data.input_template)
    if cfg.data.input_template and cfg.data.apply_chat_template:
        raise UserError(
            "--data.input_template and --data.apply_chat_template both render the prompt: choose one."
        )
    if cfg.chat.system_prompt and not cfg.data.apply_chat_template:
        raise UserError("--chat.system_prompt is a chat message: it needs --data.apply_chat_template.")
    if cfg.rollout.backend != "hf":
        raise UserError("repulse chat runs on the hf backend (--rollout.backend hf).")
    if cfg.rollout.n_samples_per_prompt != 1:
        raise UserError("repulse chat replies once per turn: --rollout.n_samples_per_prompt must be 1.")
    check_sampling(cfg.rollout)


def main(argv: list[str]) -> int:
    cfg = parse_config("chat", ChatConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


class Conversation:
    """The turns so far and how they are rendered into one prompt."""

    def __init__(self, cfg: ChatConfig, tokenizer: Any):
        self.cfg, self.tok = cfg, tokenizer
        self.turns: list[tuple[str, str]] = []  # (user, assistant)

    def render(self, user: str, turns: list[tuple[str, str]]) -> str:
        from repulse.data.templates import render_chat

        d = self.cfg.data
        if d.apply_chat_template:
            msgs: list[dict[str, str]] = []
            if self.cfg.chat.system_prompt:
                msgs.append({"role": "system", "content": self.cfg.chat.system_prompt})
            for u, a in turns:
                msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            msgs.append({"role": "user", "content": user})
            return render_chat(self.tok, msgs, add_generation_prompt=True)
        template = d.input_template or "{}"
        eos = self.tok.eos_token or ""
        history = "".join(template.format(u) + a + eos for u, a in turns)
        return history + template.format(user)

    def prompt_ids(self, user: str) -> tuple[str, list[int]]:
        """The rendered prompt and its ids, dropping the oldest turns to fit ``--chat.max_len``."""
        from repulse.data.templates import encode, special_prefix

        turns = list(self.turns)
        while True:
            text = self.render(user, turns)
            prefix = [] if self.cfg.data.apply_chat_template else special_prefix(self.tok)
            ids = prefix + encode(self.tok, text)
            if len(ids) <= self.cfg.chat.max_len or not turns:
                break
            turns = turns[1:]
        if len(ids) > self.cfg.chat.max_len:
            raise UserError(
                f"the message is {len(ids)} tokens with its template, more than --chat.max_len {self.cfg.chat.max_len}."
            )
        return text, ids


def run(cfg: ChatConfig, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    import torch

    from repulse.engine.dist import default_device
    from repulse.models.loading import load_tokenizer
    from repulse.workflows.generate import chunk_seed
    from repulse.workflows.inference import Scorer, build_rollout_engine, decode_responses, sampling_params

    validate(cfg)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    device = default_device()
    tok = load_tokenizer(cfg.model.model_name_or_path, chat_template=cfg.data.tokenizer_chat_template)
    engine = build_rollout_engine(cfg.model.model_name_or_path, tok, cfg.rollout, cfg.engine, None, device)
    scorer = Scorer(cfg.reward, device, 1) if has_reward(cfg.reward) else None
    conv = Conversation(cfg, tok)
    interactive = stdin.isatty()
    if interactive:
        print(
            "[repulse] chat: type a message; 'clear' starts over, 'exit' ends.", file=sys.stderr, flush=True
        )
    turn = 0
    while True:
        if interactive:
            print("user: ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            break
        user = line.rstrip("\n")
        if user.strip() == "exit":
            break
        if user.strip() == "clear":
            conv.turns = []
            print("[conversation cleared]", file=stdout, flush=True)
            continue
        text, ids = conv.prompt_ids(user)
        with torch.no_grad():
            samples = engine.generate(
                [ids], 1, sampling_params(cfg.rollout, chunk_seed(cfg.rollout.seed, 0, turn))
            )
        reply = decode_responses(tok, samples)[0]
        conv.turns.append((user, reply))
        print(f"assistant: {reply.strip()}", file=stdout, flush=True)
        if scorer is not None:
            print(f"reward: {scorer([text], [reply], questions=[user])[0]:.4f}", file=stdout, flush=True)
        turn += 1
    return 0
