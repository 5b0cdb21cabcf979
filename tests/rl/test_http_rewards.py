"""HTTP reward servers (``--reward.remote_url URL[,URL...]``): sharding over several servers,
retries, timeouts and error answers, against a stand-in for a user's own server (the documented
protocol: ``POST /get_reward {"query": [...]}`` -> ``{"rewards": [...]}``) and against the real
``repulse serve-rm``; and RLOO through ``repulse serve-rm`` raises the reward model's score.

Semantics under test: a request is tried ``1 + --reward.retries`` times; refused connections,
dropped connections, answers slower than ``--reward.timeout_s`` and HTTP 5xx are retried; an
HTTP 4xx is the request's own fault and is not retried, and its status and body are shown.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))  # the RL test helpers

from test_rl import (  # noqa: E402
    RewardServer,
    first_last,
    free_port,
    rl_cfg,
    rm_cfg,
    run_rl,
)

from repulse.errors import UserError  # noqa: E402
from repulse.rl.reward_http import HTTPRewardSource, post_json  # noqa: E402
from repulse.rl.rewards import RewardInput, RewardModelSource  # noqa: E402


def e_fraction(text: str) -> float:
    return text.count("e") / len(text) if text else 0.0


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out: a broken pipe
        pass


class StandIn:
    """A user's own reward server on 127.0.0.1 and a free port: answers ``{"rewards": [e-fraction
    of each query]}``, after playing ``script`` on its first requests, one entry each: ``"drop"``
    (close the connection without an answer), an int (answer that HTTP status with a JSON body),
    a float (sleep that many seconds, then answer). Records every request body and its arrival."""

    def __init__(self, script: list | None = None):
        self.script = list(script or [])
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                with outer.lock:
                    outer.requests.append(body)
                    action = outer.script.pop(0) if outer.script else "ok"
                if action == "drop":
                    self.close_connection = True
                    return
                if isinstance(action, int):
                    return self._send(action, {"error": f"scripted failure {action} for {self.path}"})
                if isinstance(action, float):
                    time.sleep(action)
                self._send(200, {"rewards": [e_fraction(q) for q in body["query"]]})

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/get_reward"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_ins():
    made: list[StandIn] = []

    def make(script: list | None = None) -> StandIn:
        made.append(StandIn(script))
        return made[-1]

    yield make
    for s in made:
        s.close()


def batch_of(queries: list[str]) -> RewardInput:
    return RewardInput(queries, [""] * len(queries), queries, [f"label-{i}" for i in range(len(queries))])


def texts(n: int) -> list[str]:
    return [f"sample {i}: " + "e" * i + "x" * (n - i) for i in range(n)]


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n, sizes", [(12, [4, 4, 4]), (10, [3, 3, 4]), (2, [0, 1, 1])])
def test_several_servers_get_equal_contiguous_shards_in_order(stand_ins, n, sizes):
    """3 servers: server i gets samples [i·n/3, (i+1)·n/3) (floors): equal shards when 3 divides the
    batch, else sizes differing by at most one; one request each (none for an empty shard), with
    the matching slice of the labels, and the rewards come back in the batch's order (each reward
    is a function of its own query, so a mis-assembled batch would not equal the expected list)."""
    servers = [stand_ins() for _ in range(3)]
    queries = texts(n)
    out = HTTPRewardSource([s.url for s in servers], timeout=10, retries=0)(batch_of(queries))
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx([e_fraction(q) for q in queries], abs=1e-7)
    start = 0
    for server, size in zip(servers, sizes):
        assert len(server.requests) == (1 if size else 0)
        if size:
            assert server.requests[0]["query"] == queries[start : start + size]
            assert server.requests[0]["labels"] == [f"label-{i}" for i in range(start, start + size)]
        start += size


@pytest.mark.slow
def test_rl_with_two_reward_servers_sends_each_half_of_every_rollout(toy, tmp_path, stand_ins):
    """``repulse rl --reward.remote_url A,B`` (the second without the ``/get_reward`` path, which is
    implied), 2 steps of 8 prompts x 4 samples: each server gets one request of 16 queries per
    step, A the first half of the rollout and B the second (each prompt's 4 samples are
    consecutive, so A holds the first 4 prompts' groups), and the logged step reward is the mean
    of the 32 rewards the servers returned (float32 sums of 32 values in [0, 1]: 1e-6)."""
    a, b = stand_ins(), stand_ins()
    urls = f"{a.url},{b.url.removesuffix('/get_reward')}"
    rows = run_rl(rl_cfg(toy, tmp_path / "out", reward__remote_url=urls, train__max_steps=2))
    assert [r["step"] for r in rows] == [1, 2]
    assert len(a.requests) == len(b.requests) == 2
    for row, ra, rb in zip(rows, a.requests, b.requests):
        assert len(ra["query"]) == len(rb["query"]) == 16
        for req in (ra, rb):
            assert all(req["prompts"][i] == req["prompts"][i - i % 4] for i in range(16))  # whole groups
        returned = [e_fraction(q) for q in ra["query"] + rb["query"]]
        assert row["reward"] == pytest.approx(sum(returned) / 32, abs=1e-6)


# --------------------------------------------------------------------------- retries and errors


def test_a_server_that_fails_first_is_retried_until_it_answers(stand_ins):
    """First request: the connection is dropped without an answer; second: HTTP 503; third: a
    proper answer. With ``retries=2`` (3 tries) the call succeeds with the right rewards, after
    exactly 3 requests; with ``retries=1`` the same script gives an error naming the 503 and the
    2 tries (5xx is retried, so the 503 was the last failure)."""
    server = stand_ins(["drop", 503])
    queries = texts(4)
    out = HTTPRewardSource([server.url], timeout=10, retries=2)(batch_of(queries))
    assert out.tolist() == pytest.approx([e_fraction(q) for q in queries], abs=1e-7)
    assert len(server.requests) == 3

    failing = stand_ins(["drop", 503])
    with pytest.raises(UserError) as err:
        post_json(failing.url, {"query": queries}, timeout=10, retries=1)
    msg = str(err.value)
    assert failing.url in msg and "HTTP 503" in msg and "scripted failure 503" in msg, msg
    assert "after 2 tries" in msg, msg
    assert len(failing.requests) == 2


def test_a_server_slower_than_the_timeout_is_a_clear_error_after_the_retries(toy, tmp_path, stand_ins):
    """The server sleeps 3 s before every answer; ``--reward.timeout_s 0.5`` and
    ``--reward.retries 1``: ``repulse rl`` stops with one UserError naming the URL, the timeout and
    the 2 tries, after exactly 2 requests. One more call with ``retries=0`` fails after 1 try in
    under 3 s (one 0.5 s wait; without the timeout the answer alone would take 3 s)."""
    server = stand_ins([3.0] * 5)
    cfg = rl_cfg(toy, tmp_path / "out", reward__remote_url=server.url, train__max_steps=1)
    cfg.reward.timeout_s, cfg.reward.retries = 0.5, 1
    with pytest.raises(UserError) as err:
        run_rl(cfg)
    msg = str(err.value)
    assert server.url in msg and "did not answer within --reward.timeout_s 0.5 s" in msg, msg
    assert "after 2 tries" in msg, msg
    assert len(server.requests) == 2
    start = time.perf_counter()
    post_error = None
    try:
        post_json(server.url, {"query": ["x"]}, timeout=0.5, retries=0)
    except UserError as exc:
        post_error = str(exc)
    assert post_error is not None and "after 1 try " in post_error, post_error
    assert time.perf_counter() - start < 3.0  # the timeout cut the 3 s answer short


def test_a_4xx_answer_is_not_retried_and_shows_status_and_body(stand_ins):
    """HTTP 422 with a JSON body: one request only although ``retries=3``, and the error names the
    URL, the status and the body's text (the server's reason is what the user needs)."""
    server = stand_ins([422])
    with pytest.raises(UserError) as err:
        post_json(server.url, {"query": ["a"]}, timeout=10, retries=3)
    msg = str(err.value)
    assert server.url in msg and "HTTP 422" in msg and "scripted failure 422 for /get_reward" in msg, msg
    assert len(server.requests) == 1


@pytest.mark.parametrize("retries, tries", [(0, "1 try"), (2, "3 tries")])
def test_nothing_listening_counts_the_tries(retries, tries):
    """A refused connection is retried ``retries`` times: the error says ``after 1 try`` for
    retries 0 (regression: it said "after 0 tries") and ``after 3 tries`` for retries 2."""
    url = f"http://127.0.0.1:{free_port()}/get_reward"
    with pytest.raises(UserError) as err:
        post_json(url, {"query": ["a"]}, timeout=5, retries=retries)
    msg = str(err.value)
    assert url in msg and "did not answer" in msg and f"after {tries} " in msg, msg


# --------------------------------------------------------------------------- the real repulse serve-rm


@pytest.fixture(scope="module")
def serve_rm(toy_rm):
    server = RewardServer(toy_rm)
    yield server
    server.close()


@pytest.mark.slow
def test_serve_rm_shards_and_bad_requests(toy_rm, serve_rm):
    """Against ``repulse serve-rm`` (micro-batches of 7): 11 texts sent as 2 shards (5 + 6, to the
    same server under its full URL and its base URL) come back equal to the in-process reward
    model's scores within 1e-5 (fp32; only padding and batch shapes differ) and in order (the
    scores differ: std > 0.1). A malformed request (``query`` not a list; a JSON list for a body)
    is answered HTTP 400, not retried into a "did not answer", and its reason is in the error."""
    queries = [f"User: say the word {w} many times:\nAssistant: {w} {w}" for w in "abcdefghijk"]
    queries[3] += " thank you, that is very kind"
    base = serve_rm.url.removesuffix("/get_reward")
    got = HTTPRewardSource([serve_rm.url, base], timeout=60, retries=1)(batch_of(queries))
    local = RewardModelSource(
        str(toy_rm), torch.device("cpu"), max_len=2048, input_format="auto", chosen_label=None,
        offload=False, micro_batch_size=32,
    )  # fmt: skip
    expected = local(RewardInput(queries, [""] * 11, queries, [None] * 11))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(expected.std()) > 0.1
    with pytest.raises(UserError) as err:
        post_json(serve_rm.url, {"query": "not a list"}, timeout=60, retries=3)
    assert "HTTP 400" in str(err.value) and "'query' must be a list of strings" in str(err.value)
    with pytest.raises(UserError) as err:
        post_json(serve_rm.url, ["a list"], timeout=60, retries=3)  # type: ignore[arg-type]
    assert "HTTP 400" in str(err.value) and "bad request" in str(err.value)


@pytest.mark.slow
def test_rloo_through_serve_rm_raises_the_reward_models_score(toy, toy_rm, serve_rm, tmp_path):
    """``test_rl.test_rloo_raises_a_trained_reward_models_score`` with the reward model behind
    ``repulse serve-rm`` instead of in process (its greedy evaluation left out): RLOO at lr 2e-2,
    16 steps. The server gives the in-process scores (within 1e-5, tested above and in test_rl),
    so the same margin applies: the sampled reward starts at ≈ −1.0 with a per-sample std ≈0.5
    (standard error of a 4-step mean over 128 samples ≈0.05); measured rises of the last-4 over
    the first-4-step mean (in process, seeds 42/1/2): 3.2/1.9/2.3. Required: 0.5."""
    cfg = rm_cfg(toy, toy_rm, tmp_path / "rl", algo__advantage__estimator="rloo", actor__adam__lr=2e-2)
    cfg.reward.model_name_or_path, cfg.reward.remote_url = None, serve_rm.url
    rows = run_rl(cfg)
    assert [r["step"] for r in rows] == list(range(1, 17))
    first, last = first_last(rows)
    assert last >= first + 0.5, (first, last, [round(r["reward"], 3) for r in rows])
