"""The OpenAI-compatible HTTP backend against a real server on 127.0.0.1 (UnifiedReward's vLLM path)."""
from __future__ import annotations

import logging
import math
import time
import re

import numpy as np
import pytest
import torch
from fixtures_vlm_http import ScriptedChatServer, request_images, request_text

from fyp.rewards import build
from fyp.rewards.http_backend import ChatClient, HTTPError, RateLimiter

SECRET = "sk-test-DO-NOT-LOG-4242"


def _caption(body: dict) -> str:
    return re.search(r"Text Caption: \[(.*)\]", request_text(body)).group(1)


def _score_answer(body: dict) -> str:
    """Crafted UnifiedReward answers: the caption says which score (or garbage) to give."""
    caption = _caption(body)
    if caption.startswith("score "):
        return f"cat (object): 1\nFinal Score: {caption.split()[1]}"
    return "I cannot rate this image."


def _images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 24, 40, 3), dtype=torch.uint8, generator=g)


def test_unifiedreward_http_backend_scores_and_counts_failures(monkeypatch):
    monkeypatch.setenv("FYP_TEST_KEY", SECRET)
    with ScriptedChatServer(_score_answer) as server:
        reward = build("unifiedreward", backend="http", base_url=server.base_url, served_model="ur-7b",
                       api_key_env="FYP_TEST_KEY", concurrency=3)
        images = _images(4)
        scores = reward.score(images, ["score 4", "score 2.5", "a dog", "score 9"])
    assert scores.dtype == torch.float32
    assert scores[0] == 4.0 and scores[1] == 2.5 and math.isnan(scores[2]) and math.isnan(scores[3])
    assert reward.failures == 2
    assert len(server.requests) == 4
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == "ur-7b" and body["temperature"] == 0.0
    assert "assign a score from 1 to 5 after 'Final Score:'" in request_text(body)
    # the image arrives intact (lossless PNG data URL), before the text
    assert body["messages"][0]["content"][0]["type"] == "image_url"
    got = {_caption(r["body"]): np.asarray(request_images(r["body"])[0]) for r in server.requests}
    for i, caption in enumerate(["score 4", "score 2.5", "a dog", "score 9"]):
        assert np.array_equal(got[caption], images[i].numpy())


def test_retries_a_500_then_succeeds_and_never_logs_the_key(monkeypatch, caplog):
    monkeypatch.setenv("FYP_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with ScriptedChatServer(lambda body: "Final Score: 3", failures=[(500, {}), (503, {})]) as server:
        client = ChatClient(server.base_url, "m", api_key_env="FYP_TEST_KEY", backoff_s=0.01)
        answer = client.chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert answer == "Final Score: 3"
    assert len(server.requests) == 3 and client.requests_sent == 3
    assert all(r["headers"]["Authorization"] == f"Bearer {SECRET}" for r in server.requests)
    assert "HTTP 500" in caplog.text and "HTTP 503" in caplog.text  # the retries were logged ...
    assert SECRET not in caplog.text  # ... without the key


def test_backoff_grows_and_honours_retry_after(monkeypatch):
    with ScriptedChatServer(lambda body: "ok", failures=[(429, {"Retry-After": "0.3"}), (502, {}), (502, {})]) as server:
        client = ChatClient(server.base_url, "m", api_key_env=None, backoff_s=0.05)
        assert client.chat([{"role": "user", "content": "x"}]) == "ok"
    t = [r["time"] for r in server.requests]
    gaps = np.diff(t)
    assert len(t) == 4
    assert gaps[0] >= 0.3  # Retry-After wins over the 0.05 s first backoff
    assert gaps[1] >= 0.1 and gaps[2] >= 0.2  # 0.05 * 2^1, 0.05 * 2^2
    assert "Authorization" not in server.requests[0]["headers"]  # no key configured -> no header


def test_gives_up_after_max_retries_and_does_not_retry_client_errors(monkeypatch, caplog):
    monkeypatch.setenv("FYP_TEST_KEY", SECRET)
    with ScriptedChatServer(lambda body: "never", failures=[(500, {})] * 3) as server:
        client = ChatClient(server.base_url, "m", api_key_env="FYP_TEST_KEY", max_retries=2, backoff_s=0.01)
        with pytest.raises(HTTPError, match="HTTP 500 after 3 attempts") as err:
            client.chat([{"role": "user", "content": "x"}])
        assert SECRET not in str(err.value)
    with ScriptedChatServer(lambda body: "never", failures=[(401, {})]) as server:
        reward = build("unifiedreward", backend="http", base_url=server.base_url, api_key_env="FYP_TEST_KEY",
                       backoff_s=0.01)
        scores = reward.score(_images(1), ["score 3"])
    assert math.isnan(scores[0]) and reward.failures == 1 and len(server.requests) == 1
    assert "HTTP 401 (not retried)" in caplog.text and SECRET not in caplog.text


def test_connection_refused_is_retried_then_reported():
    with ScriptedChatServer(lambda body: "x") as server:
        url = server.base_url
    client = ChatClient(url, "m", api_key_env=None, max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(HTTPError, match="connection error"):
        client.chat([{"role": "user", "content": "x"}])
    assert client.requests_sent == 2


def test_rate_limit_spaces_requests_across_threads():
    """The limiter's contract is on the client: request start times at least 1/rate apart across
    threads, and no request sent before its start. The server's arrival times add thread wake-up and
    handler jitter (a busy box shifted one arrival by 24 ms in 700 runs), so they are checked loosely."""
    with ScriptedChatServer(lambda body: "Final Score: 1") as server:
        client = ChatClient(server.base_url, "m", api_key_env=None, requests_per_second=10, concurrency=4)
        starts, wait = [], client.limiter.wait

        def timed_wait():
            start = wait()
            starts.append((start, time.monotonic()))
            return start

        client.limiter.wait = timed_wait
        answers = client.chat_many([[{"role": "user", "content": str(i)}] for i in range(6)])
    assert answers == ["Final Score: 1"] * 6
    scheduled = sorted(start for start, _ in starts)
    # 6 starts at 10/s: each one interval after the one before, even with 4 threads
    assert len(starts) == 6 and min(np.diff(scheduled)) >= 0.1 - 1e-9
    assert all(woke >= start for start, woke in starts)
    t = sorted(r["time"] for r in server.requests)
    assert t[-1] - t[0] >= 0.5 - 0.1


def test_rate_limiter_unlimited_and_bad_urls():
    limiter = RateLimiter(0)
    limiter.wait(), limiter.wait()  # no sleep, no error
    with pytest.raises(ValueError, match="http"):
        ChatClient("localhost:8000", "m")
    with pytest.raises(ValueError, match="base_url"):
        build("unifiedreward", backend="http")
