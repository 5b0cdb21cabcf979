"""``repulse score``: every reward source of ``repulse rl``, the post-processors through the command, chat
conversations, and the one-paragraph errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from repulse.cli import main as cli
from repulse.config.sections import RewardSection, ScoreConfig
from repulse.workflows import score
from repulse.workflows.inference import Scorer

# reward = number of characters of the response (queries are prompt + response)
REWARD_FUNC = """
def reward_func(queries, prompts, labels):
    return [float(len(q) - len(p)) + (100.0 if l == "bonus" else 0.0) for q, p, l in zip(queries, prompts, labels)]
"""

ROWS = [
    {"input": "q1 ", "output": "aaa", "label": "x", "id": 1},
    {"input": "q1 ", "output": "a", "label": "x", "id": 2},
    {"input": "q2 ", "output": "bb", "label": "bonus", "id": 3},
    {"input": "q2 ", "output": "bbbbb", "label": "x", "id": 4},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def func_file(tmp_path) -> Path:
    path = tmp_path / "length_reward.py"
    path.write_text(REWARD_FUNC)
    return path


def _score(tmp_path, func_file, post: str, *extra: str) -> list[dict]:
    data = _jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / f"{post}.jsonl"
    argv = ["score", "--dataset", str(data), "--remote_rm_url", str(func_file), "--label_key", "label"]
    assert (
        cli([*argv, "--post_processor", post, "--output_path", str(out), "--micro_batch_size", "3", *extra])
        == 0
    )
    return _rows(out)


def test_rewards_and_rows_with_a_reward_function(tmp_path, func_file):
    rows = _score(tmp_path, func_file, "none")
    assert [r["reward"] for r in rows] == [3.0, 1.0, 102.0, 5.0]
    assert rows[0] == {"input": "q1 ", "output": "aaa", "label": "x", "id": 1, "reward": 3.0}


def test_rs_iter_dpo_and_csft_through_the_command(tmp_path, func_file):
    assert [(r["output"], r["id"]) for r in _score(tmp_path, func_file, "rs")] == [("aaa", 1), ("bb", 3)]
    pairs = _score(tmp_path, func_file, "iter_dpo")
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("q1 ", "aaa", "a"),
        ("q2 ", "bb", "bbbbb"),
    ]
    csft = _score(tmp_path, func_file, "csft", "--reward_template", "[{reward}] {input}")
    assert [r["input"] for r in csft] == ["[3.00] q1 ", "[1.00] q1 ", "[102.00] q2 ", "[5.00] q2 "]


def test_normalize_reward_is_z_scores_over_the_file(tmp_path, func_file):
    rows = _score(tmp_path, func_file, "none", "--normalize_reward")
    raw = torch.tensor([3.0, 1.0, 102.0, 5.0])
    z = (raw - raw.mean()) / raw.std(unbiased=False)
    assert [r["reward"] for r in rows] == pytest.approx(z.tolist(), abs=1e-6)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def reward_server():
    """A reward server on 127.0.0.1: reward = 10 x the number of 'b' in the query."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = json.dumps({"rewards": [10.0 * q.count("b") for q in body["query"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/get_reward"
    server.shutdown()


def test_several_sources_combine_a_reward_model_a_function_and_a_server(
    tmp_path, func_file, reward_server, toy_rm
):
    data = _jsonl(tmp_path / "in.jsonl", ROWS)
    cfg = ScoreConfig()
    cfg.data.dataset, cfg.data.label_key = str(data), "label"
    cfg.reward.model_name_or_path = str(toy_rm)
    cfg.reward.remote_url = f"{func_file},{reward_server}"
    cfg.output.path = str(tmp_path / "out.jsonl")
    score.run(cfg)
    rm = Scorer(RewardSection(model_name_or_path=str(toy_rm)), torch.device("cpu"), 8)(
        [r["input"] for r in ROWS], [r["output"] for r in ROWS]
    )
    func = [3.0, 1.0, 102.0, 5.0]
    server = [0.0, 0.0, 20.0, 50.0]
    expected = [a + b + c for a, b, c in zip(rm, func, server)]
    assert [r["reward"] for r in _rows(tmp_path / "out.jsonl")] == pytest.approx(expected, abs=1e-4)


def test_conversations_are_split_at_their_last_assistant_turn(toy, tmp_path, func_file):
    """The seed's conditional-SFT scoring: --input_key chosen --apply_chat_template, no output key."""
    from repulse.data.templates import render_chat
    from repulse.models.loading import load_tokenizer

    convs = [
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
        {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}, {"role": "assistant", "content": "dd"}]},
    ]  # fmt: skip
    data = _jsonl(tmp_path / "conv.jsonl", convs)
    out = tmp_path / "out.jsonl"
    argv = [
        "score",
        "--dataset",
        str(data),
        "--input_key",
        "chosen",
        "--apply_chat_template",
        "--output_path",
        str(out),
    ]
    assert cli([*argv, "--remote_rm_url", str(func_file), "--data.tokenizer", str(toy.llama)]) == 0
    tok = load_tokenizer(str(toy.llama))
    rows = _rows(out)
    for row, conv in zip(rows, convs):
        msgs = conv["chosen"]
        assert row["input"] == render_chat(tok, msgs[:-1], add_generation_prompt=True)
        assert row["input"] + row["output"] == render_chat(tok, msgs, add_generation_prompt=False).rstrip()
        assert row["output"].startswith(msgs[-1]["content"])
        assert row["reward"] == float(len(row["output"]))


def test_a_file_without_the_output_key_is_one_paragraph(tmp_path, func_file, capsys):
    data = _jsonl(tmp_path / "prompts.jsonl", [{"input": "q1", "label": "x"}, {"input": "q2"}])
    argv = [
        "score",
        "--dataset",
        str(data),
        "--remote_rm_url",
        str(func_file),
        "--output_path",
        str(tmp_path / "o"),
    ]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1
    msg = " ".join(err.split())
    assert (
        "row 1 (" in msg and "prompts.jsonl, line 1) has no key 'output'" in msg and "'input', 'label'" in msg
    )
    assert "Score a repulse generate output" in msg and "--data.output_key none" in msg
    assert not (tmp_path / "o").exists()


def test_score_refuses_generation_tasks_and_needs_a_reward(tmp_path, capsys):
    data = str(_jsonl(tmp_path / "in.jsonl", ROWS))
    assert cli(["score", "--eval_task", "generate", "--dataset", data, "--output_path", "o"]) == 2
    assert "job of repulse generate" in capsys.readouterr().err
    assert cli(["score", "--dataset", data, "--output_path", "o"]) == 2
    assert "needs a reward source" in capsys.readouterr().err
