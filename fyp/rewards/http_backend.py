"""A small client for OpenAI-compatible chat-completion servers (vLLM, SGLang, hosted APIs).

Images travel as base64 PNG data URLs. The API key is read from an environment variable at request time and is
never logged or put into an exception message. Requests that fail with 429, 5xx or a connection error are retried
with exponential backoff (honouring Retry-After); a token-interval rate limiter spaces requests across threads.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

log = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


def image_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_message(images: list[Image.Image], text: str) -> list[dict]:
    """One user turn: the images (in order), then the text."""
    content = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


class RateLimiter:
    """At most `per_second` request starts per second across all threads (0 = unlimited)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Sleep until this caller's start time (time.monotonic) and return it."""
        now = time.monotonic()
        if self.interval == 0:
            return now
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)
        return start


class HTTPError(RuntimeError):
    """A request that failed for good (after retries, or with a status that is not worth retrying)."""


class ChatClient:
    """POST {base_url}/chat/completions with greedy decoding; `chat_many` runs requests concurrently."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 requests_per_second: float = 0.0, concurrency: int = 8, timeout_s: float = 120.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.limiter = RateLimiter(requests_per_second)
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.requests_sent = 0  # every attempt, retries included

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = "Bearer " + key
        return headers

    def chat(self, messages: list[dict], max_tokens: int = 512) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens,
                           "temperature": 0.0, "top_p": 1.0}).encode()
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            self.requests_sent += 1
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read())
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as err:
                status, retry_after = err.code, err.headers.get("Retry-After") if err.headers else None
                if status not in RETRY_STATUSES:
                    raise HTTPError(f"{self.url}: HTTP {status} (not retried)") from None
                reason = f"HTTP {status}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                reason = f"connection error ({type(err).__name__})"
            except (KeyError, IndexError, TypeError, json.JSONDecodeError):
                raise HTTPError(f"{self.url}: malformed chat-completion response") from None
            if attempt == self.max_retries:
                raise HTTPError(f"{self.url}: {reason} after {attempt + 1} attempts")
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (1 + 0.1 * random.random())
            if retry_after is not None:
                try:
                    delay = max(delay, float(retry_after))
                except ValueError:
                    pass
            log.warning("%s: %s, retry %d/%d in %.2fs", self.url, reason, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def chat_many(self, conversations: list[list[dict]], max_tokens: int = 512) -> list[str | None]:
        """Answers in input order; a conversation whose request failed for good gives None (logged)."""
        def one(messages):
            try:
                return self.chat(messages, max_tokens)
            except HTTPError as err:
                log.error("%s", err)
                return None
        if len(conversations) <= 1 or self.concurrency == 1:
            return [one(m) for m in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(one, conversations))
