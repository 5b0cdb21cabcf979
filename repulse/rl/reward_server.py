"""``repulse serve-rm``: a reward model behind ``POST /get_reward``.

Request ``{"query": [text, ...]}`` (optionally ``"prompts"``, ``"labels"``, and
``"questions"`` / ``"responses"``, which ``repulse rl`` sends); answer ``{"rewards": [...],
"scores": [...]}``. Requests are scored in micro-batches of ``--batch_size``; a malformed
request gets HTTP 400 with a one-line reason (clients do not retry it), a failure while
scoring HTTP 500 (clients retry it).

A reward model trained by ``repulse rm`` is scored in the format it was trained on (its
config records it): with ``questions`` and ``responses`` the prompt template (or chat
template) is applied to the raw questions exactly as in training; with ``prompts`` alone
they are taken as already rendered (each query is its prompt followed by the response);
with ``query`` alone each text is scored whole. Either way eos is appended as in training.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from repulse.errors import UserError


class RewardScorer:
    """Scores full texts with a sequence-scalar model, optionally normalised by its saved stats."""

    def __init__(self, path: str, max_len: int, batch_size: int, normalize: bool, device: str = "cpu"):
        from repulse.rl.rewards import RewardInput, RewardModelSource

        self._input = RewardInput
        self.source = RewardModelSource(
            path,
            torch.device(device),
            max_len=max_len,
            input_format="auto",
            chosen_label=None,
            offload=False,
            micro_batch_size=batch_size,
        )
        self.normalize = normalize
        self.lock = threading.Lock()

    def score(
        self,
        queries: list[str],
        prompts: list[str] | None = None,
        questions: list[str] | None = None,
        responses: list[str] | None = None,
    ) -> list[float]:
        batch = self.reward_input(queries, prompts, questions, responses)
        with self.lock:
            r = self.source(batch)
        if self.normalize:
            r = (r - self.source.mean) / self.source.std
        return [float(x) for x in r]

    def reward_input(
        self,
        queries: list[str],
        prompts: list[str] | None,
        questions: list[str] | None,
        responses: list[str] | None,
    ):
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
        return self._input(
            queries=queries, prompts=prompts, responses=responses, labels=[None] * n, questions=questions
        )


def make_server(scorer: RewardScorer, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: one line per request is noise at RL rates
            return

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # health check
            self._send(200, {"status": "ok"}) if self.path in ("/", "/health") else self._send(
                404, {"error": "not found"}
            )

        def do_POST(self):
            if self.path.rstrip("/") != "/get_reward":
                return self._send(404, {"error": "POST /get_reward"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                queries = body["query"]
                if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
                    raise ValueError("'query' must be a list of strings")
                extra = {}
                for key in ("prompts", "questions", "responses"):
                    value = body.get(key)
                    if value is not None and (
                        not isinstance(value, list)
                        or len(value) != len(queries)
                        or not all(isinstance(v, str) for v in value)
                    ):
                        raise ValueError(f"'{key}' must be a list of strings, one per query")
                    extra[key] = value
            except (ValueError, KeyError, TypeError) as exc:  # TypeError: a body that is not an object
                return self._send(400, {"error": f"bad request: {type(exc).__name__}: {exc}"})
            try:
                rewards = scorer.score(queries, **extra)
            except Exception as exc:  # answer it (HTTP 500, retried by the client) instead of dropping it
                return self._send(500, {"error": f"scoring failed: {type(exc).__name__}: {exc}"})
            self._send(200, {"rewards": rewards, "scores": rewards, "extra_logs": {}})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str]) -> int:
    from repulse.config.legacy import translate_argv

    argv, _ = translate_argv(list(argv), "serve-rm")
    parser = argparse.ArgumentParser(prog="repulse serve-rm", description=__doc__)
    parser.add_argument("--reward.model_name_or_path", dest="path", required=True)
    parser.add_argument("--reward.normalize_enable", dest="normalize", action="store_true")
    parser.add_argument("--data.max_len", dest="max_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UserError(f"repulse serve-rm: unknown options {' '.join(unknown)} (see --help).")
    scorer = RewardScorer(args.path, args.max_len, args.batch_size, args.normalize, args.device)
    try:
        server = make_server(scorer, args.host, args.port)
    except OSError as exc:
        raise UserError(
            f"--port {args.port}: cannot listen on {args.host}:{args.port} ({exc.strerror})."
        ) from None
    print(f"[repulse] reward server on http://{args.host}:{server.server_address[1]}/get_reward", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
