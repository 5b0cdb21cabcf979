"""``repulse serve-rm`` on a lab network: every hostile or broken request gets a 4xx (never retried by
the client) or a 503 (retried), and after each one - with a stalled client still connected where the
test says so - a normal request is answered at once.

The server is the real one (``make_server``, a thread on 127.0.0.1 and a free port; the last test
runs the ``repulse serve-rm`` command itself). "At once" is < 5 s: scoring two short texts takes
milliseconds, so this only fails if the request waited on something else (a stalled client, a large
request, a dead worker), while it leaves room for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from repulse.errors import UserError
from repulse.rl.reward_http import HTTPRewardSource, post_json
from repulse.rl.rewards import RewardInput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reward_format import ServeRm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AT_ONCE_S = 5.0


@pytest.fixture(scope="module")
def rm(toy, tmp_path_factory) -> Path:
    """The toy GPT-2 (512 learned positions) with a seeded scalar head, saved by transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("server_rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(toy.gpt2, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    tok = AutoTokenizer.from_pretrained(toy.gpt2)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def serve(rm):
    made: list[ServeRm] = []

    def start(**limits) -> ServeRm:
        made.append(ServeRm(rm, **limits))
        return made[-1]

    yield start
    for s in made:
        s.close()


def assert_answered_at_once(url: str) -> None:
    """A normal request of two texts gets two finite rewards within AT_ONCE_S seconds."""
    start = time.perf_counter()
    out = post_json(url, {"query": ["User: hi\nAssistant: hello", "User: bye\nAssistant: ciao"]}, 30, 0)
    elapsed = time.perf_counter() - start
    assert len(out["rewards"]) == 2 and all(abs(r) < 1e6 for r in out["rewards"]), out
    assert elapsed < AT_ONCE_S, elapsed


def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, str]:
    """Send ``head`` (request line + headers, CRLF-terminated) and ``body`` over a plain socket;
    (status, the rest of the answer)."""
    port = int(url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        text = read_to_end(s).decode(errors="replace")
    return int(text.split(" ", 2)[1]), text


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def open_stalled(url: str, head: str) -> socket.socket:
    port = int(url.split(":")[2].split("/")[0])
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head.encode())
    return s


def test_oversize_body_is_413_before_scoring_and_not_retried(serve):
    server = serve(max_body_bytes=64 * 1024)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        post_json(server.url, {"query": ["x" * 1000] * 150}, timeout=30, retries=3)
    msg = str(err.value)
    assert "HTTP 413" in msg and "exceeds the limit of 65536 bytes" in msg and "after" not in msg, msg
    assert time.perf_counter() - start < AT_ONCE_S  # no back-off: not retried
    assert_answered_at_once(server.url)


def test_a_declared_100_gb_body_is_refused_from_the_header_alone(serve):
    server = serve()
    start = time.perf_counter()
    status, text = raw_request(
        server.url, "POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n"
    )
    assert status == 413 and "exceeds the limit" in text, text
    assert time.perf_counter() - start < AT_ONCE_S
    assert_answered_at_once(server.url)


def test_too_many_items_is_413(serve):
    server = serve(max_items=4)
    with pytest.raises(UserError) as err:
        post_json(server.url, {"query": ["a"] * 5}, timeout=30, retries=3)
    assert "HTTP 413" in str(err.value) and "5 queries exceed the limit of 4" in str(err.value)
    assert post_json(server.url, {"query": ["a"] * 4}, timeout=30, retries=0)["rewards"]
    assert_answered_at_once(server.url)


def test_an_over_long_text_is_cut_and_counted_not_failed(serve):
    server = serve()
    long_text = "say the word horse many times. " * 600  # ~3,600 tokens for a 512-position model
    out = post_json(server.url, {"query": [long_text, "short"]}, timeout=60, retries=0)
    assert len(out["rewards"]) == 2 and out["extra_logs"] == {"truncated": 1}
    assert_answered_at_once(server.url)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "the body is not JSON"),
        (b'["a list"]', "must be a JSON object, not list"),
        (b'{"texts": ["a"]}', "'query' must be a list of strings"),
        (b'{"query": ["a", 3]}', "'query' must be a list of strings"),
        (b'{"query": []}', "'query' is empty"),
        (b'{"query": ["a"], "prompts": ["p", "q"]}', "'prompts' has 2 entries for 1 queries"),
    ],
)
def test_malformed_or_empty_input_is_400_with_the_reason(serve, body, reason):
    server = serve()
    status, text = raw_request(
        server.url, f"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n", body
    )
    assert status == 400 and reason in text, text
    assert_answered_at_once(server.url)


def test_an_empty_query_list_is_not_retried_by_the_client(serve):
    server = serve()
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        post_json(server.url, {"query": []}, timeout=30, retries=3)
    assert "HTTP 400" in str(err.value) and "'query' is empty" in str(err.value)
    assert time.perf_counter() - start < 0.2 + AT_ONCE_S / 10  # the first back-off alone is 0.2 s


def test_a_stalled_client_blocks_nobody_and_is_cut_off(serve):
    """One client sends headers and 10 of 100 body bytes, another only half a request line; while
    both stall, normal requests are answered at once; after --read_timeout_s (1 s) the server
    closes both (408 for the one whose body stopped)."""
    server = serve(read_timeout_s=1.0)
    body_staller = open_stalled(
        server.url, 'POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"query": ['
    )
    head_staller = open_stalled(server.url, "POST /get_rew")
    try:
        assert_answered_at_once(server.url)
        assert_answered_at_once(server.url)
        start = time.perf_counter()
        answer = read_to_end(body_staller).decode()
        assert answer.startswith("HTTP/1.0 408") and "did not arrive in time" in answer, answer
        assert head_staller.recv(65536) == b""  # closed without an answer: it never sent a request
        assert time.perf_counter() - start < 10
    finally:
        body_staller.close()
        head_staller.close()
    assert_answered_at_once(server.url)


@pytest.mark.slow
def test_a_large_request_does_not_hold_back_a_small_one(serve):
    """Round robin by micro-batch (5 texts): a 200-text request (40 micro-batches) sent first, then a
    2-text one; the small one is answered at once and before the large one, which completes too."""
    server = serve(max_items=1000)
    done: dict[str, object] = {}

    def large() -> None:
        try:
            out = post_json(server.url, {"query": [f"text number {i} " * 3 for i in range(200)]}, 300, 0)
            done["large"] = (time.perf_counter(), len(out["rewards"]))
        except UserError as exc:
            done["large"] = exc

    t = threading.Thread(target=large)
    t.start()
    deadline = time.time() + 60
    while server.server.queue.pending == 0 and time.time() < deadline:
        time.sleep(0.01)  # until the large request is being scored
    assert_answered_at_once(server.url)
    done["small"] = time.perf_counter()
    t.join(timeout=300)
    finished, n = done["large"]  # type: ignore[misc]
    assert n == 200 and done["small"] < finished, done


def test_a_request_not_scored_in_time_is_503_and_frees_the_worker(serve):
    server = serve(max_items=2000, request_timeout_s=0.2)
    with pytest.raises(UserError) as err:
        post_json(server.url, {"query": [f"text {i} " * 50 for i in range(2000)]}, timeout=60, retries=0)
    assert "HTTP 503" in str(err.value) and "not scored within 0.2 s" in str(err.value)
    server.server.limits.request_timeout_s = 30.0
    assert_answered_at_once(server.url)  # the dropped request's remaining micro-batches were not scored


def test_too_many_connections_get_503_at_once(serve):
    server = serve(max_connections=2, read_timeout_s=30.0)
    stalled = [open_stalled(server.url, "POST /get_reward HTTP/1.1\r\n") for _ in range(2)]
    try:
        time.sleep(0.2)
        start = time.perf_counter()
        with pytest.raises(UserError) as err:
            post_json(server.url, {"query": ["a"]}, timeout=30, retries=0)
        assert "HTTP 503" in str(err.value) and "2 connections open" in str(err.value)
        assert time.perf_counter() - start < AT_ONCE_S
    finally:
        for s in stalled:
            s.close()
    time.sleep(0.2)
    assert_answered_at_once(server.url)


def test_a_request_without_the_token_is_401_and_the_env_token_is_sent(serve, monkeypatch):
    server = serve(token="s3cret")
    monkeypatch.delenv("REPULSE_RM_TOKEN", raising=False)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        post_json(server.url, {"query": ["a"]}, timeout=30, retries=3)
    msg = str(err.value)
    assert "HTTP 401" in msg and "bearer token" in msg and "Set $REPULSE_RM_TOKEN" in msg, msg
    assert time.perf_counter() - start < AT_ONCE_S  # not retried
    with pytest.raises(UserError, match="HTTP 401"):
        post_json(server.url, {"query": ["a"]}, timeout=30, retries=0, token="wrong")
    monkeypatch.setenv("REPULSE_RM_TOKEN", "s3cret")
    out = HTTPRewardSource([server.url], timeout=30, retries=0)(
        RewardInput(["a", "b"], ["", ""], ["a", "b"], [None] * 2)
    )
    assert out.shape == (2,)
    assert post_json(server.url, {"query": ["a"]}, 30, 0, token="s3cret")["rewards"]
    with urllib.request.urlopen(server.url.replace("/get_reward", "/health"), timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"  # the health check needs no token


@pytest.mark.slow
def test_the_command_translates_the_seed_flags_and_takes_the_token_from_the_environment(rm, tmp_path):
    """``repulse serve-rm`` with OpenRLHF's ``openrlhf.cli.serve_rm`` flags (``--reward_pretrain``,
    ``--max_len``, ``--bf16``) and ``$REPULSE_RM_TOKEN``: it starts on 127.0.0.1, says a token is
    required, refuses a request without it (401) and scores one with it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "REPULSE_RM_TOKEN": "t0k"}
    cmd = [sys.executable, "-m", "repulse", "serve-rm", "--reward_pretrain", str(rm), "--max_len", "256"]
    cmd += ["--bf16", "--port", "0", "--device", "cpu", "--max_items", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = None
        deadline = time.time() + 120
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
            m = re.search(
                r"reward server on (http://127\.0\.0\.1:\d+/get_reward) \(bearer token required\)", line
            )
            url = m.group(1) if m else None
        assert url, "the server did not start"
        with pytest.raises(UserError, match="HTTP 401"):
            post_json(url, {"query": ["a"]}, timeout=30, retries=0, token="")
        with pytest.raises(UserError, match="9 queries exceed the limit of 8"):
            post_json(url, {"query": ["a"] * 9}, timeout=30, retries=0, token="t0k")
        out = post_json(url, {"query": ["say the word horse. " * 200]}, timeout=30, retries=0, token="t0k")
        assert out["extra_logs"]["truncated"] == 1  # --max_len 256 (translated) cut it
    finally:
        proc.terminate()
        proc.wait(timeout=30)
