"""Faulty rewards stop with one paragraph: a NaN or infinite reward from any source (a ``reward_func``
file, an HTTP server) is a ``NonFiniteError`` naming the source and the first offending sample, and a
``reward_func`` that raises is a ``UserError`` naming its file, the function and the exception's
last line. The check lives in ``score_rewards``, the one scoring path of RL, eval-tail and gcg.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from repulse.errors import NonFiniteError, UserError
from repulse.rl.reward_http import HTTPRewardSource
from repulse.rl.rewards import PythonRewardSource, RewardInput, score_rewards

QUERIES = ["User: say hi\nAssistant: hi there", "User: say bye\nAssistant: a very long goodbye " + "x" * 300]


def _batch(queries: list[str] = QUERIES) -> RewardInput:
    prompts = [q.split("Assistant: ")[0] + "Assistant: " for q in queries]
    return RewardInput(
        queries, prompts, [q[len(p) :] for q, p in zip(queries, prompts)], [None] * len(queries)
    )


def _reward_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_reward.py"
    path.write_text("import math\n\n\ndef reward_func(queries, prompts, labels):\n" + body)
    return path


class NumbersServer:
    """A user's reward server on 127.0.0.1 answering ``{"rewards": values[:len(query)]}`` as JSON
    (Python's json writes NaN and Infinity, as a server in any language might)."""

    def __init__(self, values: list[float]):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps({"rewards": values[: len(body["query"])]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/get_reward"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_nan_from_a_reward_function_names_the_file_and_the_sample(tmp_path):
    path = _reward_file(tmp_path, "    return [0.5, math.nan]\n")
    with pytest.raises(NonFiniteError) as err:
        score_rewards([PythonRewardSource(str(path))], _batch(), "sum")
    msg = str(err.value)
    assert err.value.quantity == "reward"
    assert f"reward_func in {path}" in msg and "nan for sample 1 of 2" in msg, msg
    assert "User: say bye" in msg and "xxxx" in msg and len(msg) < 600, msg  # a short excerpt, not the text


def test_inf_from_an_http_server_names_the_server_of_that_sample(tmp_path):
    """Two servers share the batch (one query each): the second answers inf, and the message names
    the second server's URL, not the first's."""
    good, bad = NumbersServer([0.25]), NumbersServer([math.inf])
    try:
        source = HTTPRewardSource([good.url, bad.url], timeout=10, retries=0)
        with pytest.raises(NonFiniteError) as err:
            score_rewards([source], _batch(), "sum")
    finally:
        good.close()
        bad.close()
    msg = str(err.value)
    assert f"the reward server {bad.url} gave inf for sample 1 of 2" in msg, msg
    assert good.url not in msg and "a very long goodbye" in msg, msg


def test_the_first_of_several_bad_samples_is_named_and_all_are_counted(tmp_path):
    path = _reward_file(tmp_path, "    return [1.0, -math.inf, math.nan, 2.0]\n")
    with pytest.raises(NonFiniteError) as err:
        score_rewards([PythonRewardSource(str(path))], _batch(QUERIES * 2), "sum")
    assert "-inf for sample 1 of 4" in str(err.value) and "2 samples of the batch" in str(err.value)


def test_finite_rewards_pass_and_combine(tmp_path):
    path = _reward_file(tmp_path, "    return [0.5, -1.5]\n")
    src = PythonRewardSource(str(path))
    torch.testing.assert_close(score_rewards([src, src], _batch(), "sum"), torch.tensor([1.0, -3.0]))


def test_a_reward_function_that_raises_is_one_paragraph_naming_file_function_and_line(tmp_path):
    path = _reward_file(tmp_path, "    labels = {}\n    return [labels['answer'] for q in queries]\n")
    with pytest.raises(UserError) as err:
        score_rewards([PythonRewardSource(str(path))], _batch(), "sum")
    msg = str(err.value)
    assert str(path) in msg and "reward_func(queries, prompts, labels) raised" in msg, msg
    assert "(line 6)" in msg and msg.endswith("KeyError: 'answer'"), msg
    assert "\n" not in msg


def test_a_reward_function_returning_text_is_a_clear_error(tmp_path):
    path = _reward_file(tmp_path, "    return ['good' for q in queries]\n")
    with pytest.raises(
        UserError, match=r"my_reward.py: reward_func\(queries, prompts, labels\) returned list"
    ):
        score_rewards([PythonRewardSource(str(path))], _batch(), "sum")


@pytest.mark.slow
def test_repulse_rl_stops_on_a_nan_reward_with_the_paragraph(toy, tmp_path):
    """``repulse rl`` with a reward function that returns NaN for every response containing an
    ``e``: exit non-zero, one ``error:`` paragraph naming the non-finite reward, the file and a
    sample, no traceback."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))
    from test_rl import rl_cfg
    from test_rm import assert_clean_error, cfg_file, cli

    path = _reward_file(tmp_path, "    return [math.nan if 'e' in q else 0.0 for q in queries]\n")
    cfg = rl_cfg(toy, tmp_path / "out", reward__remote_url=str(path), train__max_steps=1)
    proc = cli(["rl", "--config", cfg_file(cfg, tmp_path / "rl.yaml")], cwd=tmp_path)
    assert_clean_error(proc, "non-finite reward", f"reward_func in {path} gave nan for sample")
