"""``repulse chat``: driven through a pipe; replies, history, the reward of each reply."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repulse.config.sections import ChatConfig, RewardSection
from repulse.workflows import chat
from repulse.workflows.inference import Scorer

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "User: {}\nAssistant: "


def _cfg(model: Path, **data) -> ChatConfig:
    cfg = ChatConfig()
    cfg.model.model_name_or_path = str(model)
    cfg.rollout.greedy = True
    cfg.rollout.max_new_tokens = 12
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_history_is_rendered_and_the_oldest_turns_make_room(toy):
    from repulse.models.loading import load_tokenizer

    tok = load_tokenizer(str(toy.llama))
    conv = chat.Conversation(_cfg(toy.llama, input_template=TEMPLATE), tok)
    conv.turns = [("one", " two."), ("three", " four.")]
    text, ids = conv.prompt_ids("five")
    assert (
        text
        == f"User: one\nAssistant:  two.{tok.eos_token}User: three\nAssistant:  four.{tok.eos_token}User: five\nAssistant: "
    )
    conv.cfg.chat.max_len = len(ids) - 1  # one token short: the first turn goes
    text, _ = conv.prompt_ids("five")
    assert text == f"User: three\nAssistant:  four.{tok.eos_token}User: five\nAssistant: "
    chat_conv = chat.Conversation(_cfg(toy.llama, apply_chat_template=True), tok)
    chat_conv.cfg.chat.system_prompt = "be nice"
    chat_conv.turns = [("hi", "hello")]
    text, _ = chat_conv.prompt_ids("bye")
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]  # fmt: skip
    assert text == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def test_a_piped_session_prints_each_reply_and_its_reward(start_policy, toy_rm):
    cfg = _cfg(start_policy, input_template=TEMPLATE)
    cfg.reward.model_name_or_path = str(toy_rm)
    out = io.StringIO()
    chat.run(
        cfg,
        stdin=io.StringIO("what is two plus two?\nclear\nwhat is two plus two?\nexit\nnever read\n"),
        stdout=out,
    )
    lines = out.getvalue().splitlines()
    assert lines[2] == "[conversation cleared]" and len(lines) == 5
    assert lines[0].startswith("assistant: ") and lines[0] == lines[3]  # greedy, and 'clear' forgot the turn
    reply = lines[0].removeprefix("assistant: ")
    expected = Scorer(RewardSection(model_name_or_path=str(toy_rm)), torch.device("cpu"), 1)(
        [TEMPLATE.format("what is two plus two?")], [reply]
    )[0]
    assert lines[1] == f"reward: {expected:.4f}"


@pytest.mark.slow
def test_the_seed_flags_through_a_pipe(start_policy, toy_rm):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "repulse", "chat", "--pretrain", str(start_policy), "--input_template", TEMPLATE,
           "--greedy_sampling", "--max_new_tokens", "12", "--reward", str(toy_rm)]  # fmt: skip
    proc = subprocess.run(
        cmd, input="say the word dog.\nand again?\n", env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["assistant", "reward", "assistant", "reward"]
    assert "--reward -> --reward.model_name_or_path" in proc.stderr


def test_dataset_flags_are_refused(toy, capsys):
    from repulse.cli import main as cli

    assert cli(["chat", "--pretrain", str(toy.llama), "--data.dataset", "x.jsonl"]) == 2
    assert "unknown option --data.dataset" in capsys.readouterr().err
