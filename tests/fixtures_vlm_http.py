"""A real OpenAI-compatible chat server on 127.0.0.1 for tests: scripted failures first, then crafted answers."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


class ScriptedChatServer:
    """`failures`: (status, headers) pairs served, in order, before any answer. `answer(request_json) -> str` writes
    the assistant's text. Every request is recorded in `requests` as dict(time, headers, body)."""

    def __init__(self, answer, failures=()) -> None:
        self.answer = answer
        self.failures = list(failures)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"time": time.monotonic(), "path": self.path,
                                            "headers": dict(self.headers), "body": body})
                    failure = server.failures.pop(0) if server.failures else None
                if failure is not None:
                    status, headers = failure
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    payload = b'{"error": "scripted failure"}'
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                text = server.answer(body)
                payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                   "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def request_text(body: dict) -> str:
    return "".join(part["text"] for m in body["messages"] for part in m["content"] if part["type"] == "text")


def request_images(body: dict) -> list[Image.Image]:
    out = []
    for m in body["messages"]:
        for part in m["content"]:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                assert url.startswith("data:image/png;base64,")
                out.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    return out
