"""The client side of HTTP reward servers (``--reward.remote_url``): one JSON POST with retries and
clear failures, the bearer token, and the reward source that shards a batch over the servers.

``repulse serve-rm`` (:mod:`repulse.rl.reward_server`) is the server side; it reads the same
token from the same environment variable.
"""

from __future__ import annotations

import hmac
import http.client
import json
import os
import time
import urllib.error
import urllib.request

import torch

from repulse.errors import UserError
from repulse.rl.reward_input import RewardInput

AUTH_ENV = "REPULSE_RM_TOKEN"  # bearer token for reward servers: `repulse serve-rm` and its clients


def _http_body(exc: urllib.error.HTTPError, limit: int = 300) -> str:
    """The first ``limit`` characters of an error answer's body, on one line."""
    try:
        raw = exc.read()
    except Exception:  # the body itself may be cut off; the status still says enough
        return ""
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    return text[:limit] + ("..." if len(text) > limit else "")


def auth_token() -> str | None:
    """The bearer token for reward servers, from ``$REPULSE_RM_TOKEN`` (None when unset or empty).

    An environment variable rather than a flag, so that the secret never lands in a run's
    saved ``config.yaml`` or in the process list.
    """
    return os.environ.get(AUTH_ENV) or None


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), token.encode())


def post_json(url: str, payload: dict, timeout: float, retries: int, token: str | None = None) -> dict:
    """POST ``payload`` as JSON and return the JSON answer.

    Tried ``1 + retries`` times, with back-off (0.2 s, 0.4 s, ... at most 2 s between tries), when
    the server cannot be reached, does not answer within ``timeout`` seconds, drops the
    connection, answers HTTP 5xx or answers something that is not JSON. An HTTP 4xx answer says
    the request itself is wrong (too large, malformed, not authorised): it is never retried, and
    the error shows its status and body. A server that never answers is one clear error naming
    the URL and the number of tries. ``token``: sent as ``Authorization: Bearer <token>``.
    """
    data = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    tries = 1 + max(0, retries)
    failure = hint = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
        req = urllib.request.Request(url, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:  # an answer with an error status (before URLError: a subclass)
            body_text = _http_body(exc)
            status = f"HTTP {exc.code} {exc.reason}" + (f": {body_text}" if body_text else "")
            if 400 <= exc.code < 500:
                hint = (
                    f" Set ${AUTH_ENV} to the server's token."
                    if exc.code == 401 and not token
                    else (f" Is ${AUTH_ENV} the server's token?" if exc.code == 401 else "")
                )
                raise UserError(
                    f"--reward.remote_url {url}: the reward server rejected the request with {status}.{hint}"
                ) from None
            failure, hint = f"answered {status}", ""
            continue
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                failure = f"did not answer within --reward.timeout_s {timeout:g} s"
                hint = " Is it overloaded, or does it need a longer --reward.timeout_s?"
            else:
                failure = f"did not answer ({type(reason).__name__}: {reason})"
                hint = " Is it running (repulse serve-rm ...)?"
            continue
        try:
            return json.loads(body.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            failure, hint = f"answered something that is not JSON: {body[:200]!r}", " Is it a reward server?"
    plural = "try" if tries == 1 else "tries"
    raise UserError(
        f"--reward.remote_url {url}: the reward server {failure} after {tries} {plural} "
        f"(--reward.retries {retries}).{hint}"
    )


class HTTPRewardSource:
    """One or several reward servers; each batch is split into equal shards, one per server.

    A request carries ``query`` (full texts), ``prompts`` and ``labels`` (the documented
    protocol), plus ``questions`` and ``responses``, from which ``repulse serve-rm`` rebuilds
    its reward model's training format exactly (other servers ignore them). The token from
    ``$REPULSE_RM_TOKEN`` is sent when set. ``repulse serve-rm`` reports the inputs it had to
    truncate; they add to ``truncated_count``.
    """

    def __init__(self, urls: list[str], timeout: float, retries: int, token: str | None = None):
        self.urls = [
            u if u.rstrip("/").endswith("get_reward") else u.rstrip("/") + "/get_reward" for u in urls
        ]
        self.timeout, self.retries = timeout, retries
        self.token = token if token is not None else auth_token()
        self.name = "remote"
        self.truncated_count = 0
        self._bounds: list[tuple[int, int]] = []

    def describe(self, index: int) -> str:
        for url, (lo, hi) in zip(self.urls, self._bounds):
            if lo <= index < hi:
                return f"the reward server {url}"
        return f"the reward server(s) {', '.join(self.urls)}"

    def __call__(self, batch: RewardInput) -> torch.Tensor:
        from concurrent.futures import ThreadPoolExecutor

        n = len(batch.queries)
        k = len(self.urls)
        bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]
        self._bounds = bounds

        def call(i: int) -> tuple[list[float], int]:
            lo, hi = bounds[i]
            if lo == hi:
                return [], 0
            payload = {
                "query": batch.queries[lo:hi],
                "prompts": batch.prompts[lo:hi],
                "labels": batch.labels[lo:hi],
                "responses": batch.responses[lo:hi],
            }
            if batch.questions is not None:
                payload["questions"] = batch.questions[lo:hi]
            out = post_json(self.urls[i], payload, self.timeout, self.retries, self.token)
            rewards = out.get("rewards", out.get("scores")) if isinstance(out, dict) else None
            try:
                values = [float(r) for r in rewards]  # type: ignore[union-attr]
            except (TypeError, ValueError):
                values = []
            if len(values) != hi - lo:
                raise UserError(
                    f"--reward.remote_url {self.urls[i]} answered without one number per query "
                    f"({hi - lo} queries): {str(out)[:200]}"
                )
            logs = out.get("extra_logs") if isinstance(out.get("extra_logs"), dict) else {}
            truncated = logs.get("truncated", 0)
            return values, int(truncated) if isinstance(truncated, (int, float)) else 0

        with ThreadPoolExecutor(max_workers=k) as pool:
            parts = list(pool.map(call, range(k)))
        self.truncated_count += sum(t for _, t in parts)
        return torch.tensor([r for part, _ in parts for r in part], dtype=torch.float32)
