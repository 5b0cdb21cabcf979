"""``repulse serve-rm``: a reward model behind ``POST /get_reward``, safe to leave on a lab network.

Request ``{"query": [text, ...]}`` (optionally ``"prompts"``, ``"labels"``, and
``"questions"`` / ``"responses"``, which ``repulse rl`` sends); answer ``{"rewards": [...],
"scores": [...], "extra_logs": {"truncated": n}}``.

A reward model trained by ``repulse rm`` is scored in the format it was trained on (its
config records it): with ``questions`` and ``responses`` the prompt template (or chat
template) is applied to the raw questions exactly as in training; with ``prompts`` alone
they are taken as already rendered (each query is its prompt followed by the response);
with ``query`` alone each text is scored whole. Either way eos is appended as in training.
A text longer than the model reads (the least of ``--data.max_len``, its position
embeddings and its tokenizer's limit) is cut on the prompt side, never failed;
``extra_logs.truncated`` counts such texts.

Limits, so that one client or one request never takes the server from the others:

- the body: ``Content-Length`` is required and at most ``--max_body_mb`` (HTTP 413, decided
  from the header before anything is read; a declared 100 GB costs nothing); at most
  ``--max_items`` queries per request (413); the whole body must arrive within
  ``--read_timeout_s`` (a client that sends headers and stalls is cut off);
- malformed input (not JSON, not an object, ``query`` missing, empty or not a list of
  strings, side lists of the wrong length) is HTTP 400 with the reason;
- scoring: one worker scores the queued requests one micro-batch (``--batch_size``) of each
  in turn, so a large request cannot hold back a small one; at most ``--max_queued``
  requests wait (more: HTTP 503, retried by clients), and a request not scored within
  ``--request_timeout_s`` is dropped with HTTP 503;
- at most ``--max_connections`` connections at once (more: HTTP 503 at once);
- it listens on 127.0.0.1 unless ``--host`` says otherwise; with ``--auth_token`` or
  ``$REPULSE_RM_TOKEN`` every POST needs ``Authorization: Bearer <token>`` (HTTP 401).

4xx answers say the request itself is wrong, and clients never retry them; 5xx answers
(busy, timed out, scoring failed) are retried. Built on the standard library's
``http.server``: the limits above are a few lines each there, and a framework would add a
dependency without removing any of them.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from repulse.errors import UserError, warn_once
from repulse.rl.reward_http import AUTH_ENV, token_matches
from repulse.rl.rewards import RewardInput, RewardModelSource


@dataclass
class ServerLimits:
    """What one request and one client may take; see the module docstring."""

    max_body_bytes: int = 16 * 2**20
    max_items: int = 1024
    read_timeout_s: float = 30.0
    request_timeout_s: float = 120.0
    max_queued: int = 32
    max_connections: int = 64
    token: str | None = None


class RewardScorer:
    """Scores texts with a sequence-scalar model, optionally normalised by its saved stats."""

    def __init__(self, path: str, max_len: int, batch_size: int, normalize: bool, device: str = "cpu"):
        self.source = RewardModelSource(
            path,
            torch.device(device),
            max_len=max_len,
            input_format="auto",
            chosen_label=None,
            offload=False,
            micro_batch_size=batch_size,
        )
        self.batch_size = batch_size
        self.normalize = normalize
        self.lock = threading.Lock()

    def reward_input(
        self,
        queries: list[str],
        prompts: list[str] | None = None,
        questions: list[str] | None = None,
        responses: list[str] | None = None,
    ) -> RewardInput:
        """The request as a ``RewardInput``; see the module docstring for what each field adds."""
        n = len(queries)
        if responses is None:
            prompts = prompts if prompts is not None else [""] * n
            # the response is what follows the prompt in the query; a query that does not start
            # with its prompt is scored whole
            pairs = [(p, q[len(p) :]) if q.startswith(p) else ("", q) for p, q in zip(prompts, queries)]
            prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
        elif prompts is None:
            prompts = [q[: len(q) - len(r)] if q.endswith(r) else "" for q, r in zip(queries, responses)]
        return RewardInput(
            queries=queries, prompts=prompts, responses=responses, labels=[None] * n, questions=questions
        )

    def score_input(self, batch: RewardInput) -> tuple[list[float], int]:
        """(rewards, how many of these inputs were cut to fit the model)."""
        with self.lock:
            before = self.source.truncated_count
            r = self.source(batch)
            truncated = self.source.truncated_count - before
        if self.normalize:
            r = (r - self.source.mean) / self.source.std
        return [float(x) for x in r], truncated

    def score(
        self,
        queries: list[str],
        prompts: list[str] | None = None,
        questions: list[str] | None = None,
        responses: list[str] | None = None,
    ) -> list[float]:
        return self.score_input(self.reward_input(queries, prompts, questions, responses))[0]


def _slice(batch: RewardInput, lo: int, hi: int) -> RewardInput:
    return RewardInput(
        batch.queries[lo:hi],
        batch.prompts[lo:hi],
        batch.responses[lo:hi],
        batch.labels[lo:hi],
        batch.questions[lo:hi] if batch.questions is not None else None,
    )


class _Job:
    """One request's scoring: its micro-batches are taken one at a time by the worker."""

    def __init__(self, batch: RewardInput, chunk: int):
        self.batch = batch
        n = len(batch.queries)
        self.bounds = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
        self.next = 0
        self.rewards: list[float] = []
        self.truncated = 0
        self.error: str | None = None
        self.cancelled = False
        self.done = threading.Event()


class ScoringQueue:
    """A bounded set of waiting requests and one worker thread that scores them round robin.

    Why one worker: the model is one set of weights on one device, and torch already uses
    every core in one forward; why round robin by micro-batch: a request of 1,000 texts then
    delays a request of one text by one micro-batch, not by 1,000 texts.
    """

    def __init__(self, scorer: RewardScorer, max_queued: int):
        self.scorer = scorer
        self.max_queued = max_queued
        self.jobs: collections.deque[_Job] = collections.deque()
        self.pending = 0  # submitted and neither finished nor cancelled (the job being scored included)
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._work, name="repulse-serve-rm-scorer", daemon=True)
        self.thread.start()

    def submit(self, batch: RewardInput) -> _Job | None:
        """Queue ``batch``; None when ``max_queued`` requests are already waiting."""
        job = _Job(batch, self.scorer.batch_size)
        with self.cond:
            if self.pending >= self.max_queued:
                return None
            self.pending += 1
            self.jobs.append(job)
            self.cond.notify()
        return job

    def cancel(self, job: _Job) -> None:
        with self.cond:
            if job.cancelled or job.done.is_set():
                return
            job.cancelled = True
            self.pending -= 1
            if job in self.jobs:
                self.jobs.remove(job)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.jobs and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                job = self.jobs.popleft()
                lo, hi = job.bounds[job.next]
                job.next += 1
            try:
                rewards, truncated = self.scorer.score_input(_slice(job.batch, lo, hi))
            except Exception as exc:  # answered as HTTP 500 (retried), never a dead worker
                job.error = f"{type(exc).__name__}: {exc}"
                rewards, truncated = [], 0
            job.rewards += rewards
            job.truncated += truncated
            with self.cond:
                if job.cancelled:
                    continue
                if job.error is not None or job.next >= len(job.bounds):
                    self.pending -= 1
                    job.done.set()
                else:
                    self.jobs.append(job)


class RewardHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` of them; more get HTTP 503 at once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, scorer: RewardScorer, limits: ServerLimits):
        self.scorer = scorer
        self.limits = limits
        self.queue = ScoringQueue(scorer, limits.max_queued)
        self.slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            body = json.dumps(
                {"error": f"busy: {self.limits.max_connections} connections open (--max_connections)"}
            )
            reply = (
                "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
            )
            try:
                request.settimeout(1.0)
                request.sendall(reply.encode())
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that went away mid-answer (broken pipe): nothing to report

    def server_close(self) -> None:
        self.queue.close()
        super().server_close()


class _Reject(Exception):
    """An answer other than 200, with its status and reason."""

    def __init__(self, code: int, reason: str, close: bool = False):
        super().__init__(reason)
        self.code, self.reason, self.close = code, reason, close


def _string_list(body: dict, key: str, n: int | None) -> list[str] | None:
    value = body.get(key)
    if value is None and key != "query":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Reject(400, f"bad request: '{key}' must be a list of strings")
    if n is not None and len(value) != n:
        raise _Reject(400, f"bad request: '{key}' has {len(value)} entries for {n} queries")
    return value


class RewardHandler(BaseHTTPRequestHandler):
    server: RewardHTTPServer
    server_version = "repulse-serve-rm"
    protocol_version = "HTTP/1.0"  # one request per connection: a connection slot is never held idle

    def setup(self) -> None:
        # the socket timeout while the request line and headers arrive
        self.timeout = self.server.limits.read_timeout_s
        super().setup()

    def log_message(self, *args: Any) -> None:  # quiet: one line per request is noise at RL rates
        return

    def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client is gone
            self.close_connection = True

    def do_GET(self) -> None:  # health check (no token needed: it tells nothing about the model)
        if self.path in ("/", "/health"):
            self._send(200, {"status": "ok", "truncated": self.server.scorer.source.truncated_count})
        else:
            self._send(404, {"error": "not found: GET /health or POST /get_reward"})

    def do_POST(self) -> None:
        self._consumed = False
        try:
            self._answer()
        except _Reject as rej:
            if rej.close:
                self._discard_body()
            headers = {"WWW-Authenticate": "Bearer"} if rej.code == 401 else {}
            if rej.code == 503:
                headers["Retry-After"] = "1"
            if rej.close:
                self.close_connection = True
                headers["Connection"] = "close"
            self._send(rej.code, {"error": rej.reason}, headers)

    def _read_body(self) -> bytes:
        limits = self.server.limits
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _Reject(411, "chunked bodies are not accepted: send Content-Length", close=True)
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise _Reject(411, "Content-Length is required", close=True)
        try:
            length = int(raw_length)
        except ValueError:
            raise _Reject(400, f"bad Content-Length {raw_length[:40]!r}", close=True) from None
        if length < 0:
            raise _Reject(400, f"bad Content-Length {length}", close=True)
        if length > limits.max_body_bytes:
            raise _Reject(
                413,
                f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes} bytes "
                "(--max_body_mb); send fewer or shorter queries per request",
                close=True,
            )
        self._consumed = True
        return self._read_exactly(length)

    def _read_exactly(self, length: int) -> bytes:
        deadline = time.monotonic() + self.server.limits.read_timeout_s
        parts, got = [], 0
        while got < length:
            if time.monotonic() > deadline:
                raise _Reject(408, "the request body did not arrive in time (--read_timeout_s)", close=True)
            try:
                chunk = self.rfile.read1(min(1 << 16, length - got))
            except (TimeoutError, OSError):
                raise _Reject(
                    408, "the request body did not arrive in time (--read_timeout_s)", close=True
                ) from None
            if not chunk:
                raise _Reject(400, f"the body ended after {got} of {length} bytes", close=True)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _discard_body(self) -> None:
        """Read and drop an unread body of at most 4x the limit before a rejection, so that the
        client (which sends the whole body before reading) gets to read the answer; a larger one
        is not read at all: the connection is closed on it."""
        if self._consumed:
            return
        self._consumed = True
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        if 0 < length <= 4 * self.server.limits.max_body_bytes:
            try:
                self._read_exactly(length)
            except _Reject:
                pass

    def _answer(self) -> None:
        server, limits = self.server, self.server.limits
        if self.path.rstrip("/") != "/get_reward":
            raise _Reject(404, "POST /get_reward", close=True)
        if limits.token and not token_matches(self.headers.get("Authorization"), limits.token):
            raise _Reject(401, "missing or wrong bearer token (Authorization: Bearer <token>)", close=True)
        raw = self._read_body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Reject(400, f"bad request: the body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise _Reject(400, f"bad request: the body must be a JSON object, not {type(body).__name__}")
        queries = _string_list(body, "query", None) or []
        if not queries:
            raise _Reject(400, "bad request: 'query' is empty")
        if len(queries) > limits.max_items:
            raise _Reject(
                413,
                f"{len(queries)} queries exceed the limit of {limits.max_items} per request (--max_items)",
            )
        extra = {key: _string_list(body, key, len(queries)) for key in ("prompts", "questions", "responses")}
        batch = server.scorer.reward_input(queries, **extra)
        job = server.queue.submit(batch)
        if job is None:
            raise _Reject(503, f"busy: {limits.max_queued} requests are waiting to be scored (--max_queued)")
        if not job.done.wait(limits.request_timeout_s):
            server.queue.cancel(job)
        if not job.done.is_set():  # cancelled (the worker finishing it at that moment wins)
            raise _Reject(503, f"not scored within {limits.request_timeout_s:g} s (--request_timeout_s)")
        if job.error is not None:
            raise _Reject(500, f"scoring failed: {job.error}")
        self._send(
            200, {"rewards": job.rewards, "scores": job.rewards, "extra_logs": {"truncated": job.truncated}}
        )


def make_server(
    scorer: RewardScorer, host: str, port: int, limits: ServerLimits | None = None, **overrides: Any
) -> RewardHTTPServer:
    """The server, bound and ready for ``serve_forever``; ``overrides`` replace ``ServerLimits`` fields."""
    limits = limits or ServerLimits()
    for key, value in overrides.items():
        if not hasattr(limits, key):
            raise TypeError(f"unknown server limit {key!r}")
        setattr(limits, key, value)
    return RewardHTTPServer((host, port), RewardHandler, scorer, limits)


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"--{name} must be > 0, got {value}.")


def main(argv: list[str]) -> int:
    from repulse.config.legacy import translate_argv

    argv, _ = translate_argv(list(argv), "serve-rm")
    d = ServerLimits()
    parser = argparse.ArgumentParser(prog="repulse serve-rm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward.model_name_or_path", dest="path", required=True)
    parser.add_argument("--reward.normalize_enable", dest="normalize", action="store_true")
    parser.add_argument("--data.max_len", "--reward.max_len", dest="max_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=16, help="texts per forward")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max_body_mb", type=float, default=d.max_body_bytes / 2**20, help="largest request body"
    )
    parser.add_argument("--max_items", type=int, default=d.max_items, help="most queries per request")
    parser.add_argument(
        "--read_timeout_s", type=float, default=d.read_timeout_s, help="time for a request to arrive"
    )
    parser.add_argument(
        "--request_timeout_s", type=float, default=d.request_timeout_s, help="time to score one"
    )
    parser.add_argument("--max_queued", type=int, default=d.max_queued, help="requests waiting to be scored")
    parser.add_argument("--max_connections", type=int, default=d.max_connections, help="open connections")
    parser.add_argument("--auth_token", default=None, help=f"require this bearer token (or set ${AUTH_ENV})")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UserError(f"repulse serve-rm: unknown options {' '.join(unknown)} (see --help).")
    for name in ("max_len", "batch_size", "max_body_mb", "max_items", "read_timeout_s", "request_timeout_s"):
        _positive(name, getattr(args, name))
    for name in ("max_queued", "max_connections"):
        _positive(name, getattr(args, name))
    token = args.auth_token or os.environ.get(AUTH_ENV) or None
    limits = ServerLimits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_items=args.max_items,
        read_timeout_s=args.read_timeout_s,
        request_timeout_s=args.request_timeout_s,
        max_queued=args.max_queued,
        max_connections=args.max_connections,
        token=token,
    )
    if not _loopback(args.host) and not token:
        warn_once(
            "serve_rm_open",
            f"--host {args.host}: the reward server accepts requests from other machines without a token; "
            f"set ${AUTH_ENV} (or --auth_token) so that only your clients can use it.",
        )
    scorer = RewardScorer(args.path, args.max_len, args.batch_size, args.normalize, args.device)
    try:
        server = make_server(scorer, args.host, args.port, limits)
    except (OSError, socket.gaierror) as exc:
        raise UserError(
            f"--port {args.port}: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})."
        ) from None
    auth = " (bearer token required)" if token else ""
    print(
        f"[repulse] reward server on http://{args.host}:{server.server_address[1]}/get_reward{auth}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
