"""The A/B study page driven in a real headless Chromium (through its DevTools protocol), a restart that resumes,
and the agreement command on the saved choices.

The DevTools client below is a minimal RFC 6455 websocket client on the standard library (no extra dependency):
it speaks just enough of the protocol to navigate, evaluate JavaScript and click buttons.
"""
import base64
import csv
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fyp.data.stage import create_run
from fyp.evaluation.study import choices_path, left_is_a
from fyp.stages import execute_shard, get_stage


class DevTools:
    """Chromium in headless mode with one page, driven over the DevTools websocket."""

    def __init__(self):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        assert chromium, "headless Chromium is needed: run scripts/install_browser.sh"
        self.profile = tempfile.mkdtemp(prefix="fyp-chromium-")
        self.proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.time() < deadline, "Chromium did not open its DevTools port"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        path = url.split(f":{port}", 1)[1]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id = 0

    def _send_frame(self, payload: bytes) -> None:
        header = bytes([0x81])
        n = len(payload)
        header += bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                                                     else bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "DevTools connection closed"
            data += chunk
        return data

    def _recv_message(self) -> dict:
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            message += payload
            if b0 & 0x80:
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send_frame(json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            reply = self._recv_message()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.time() + timeout
        while time.time() < deadline:  # the page may still be loading: a missing element is "not yet"
            value = self.js(f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()")
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self):
        self.sock.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


def _start_study(run_dir) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "fyp.evaluation.study", "--run", str(run_dir), "--b", "single",
                             "--port", "0", "--seed", "3"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "open http://127.0.0.1:" in line, line
    return proc, line.split("open ", 1)[1].split()[0]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    import torch

    from fyp.models.flux_fill import build_pipeline

    run_dir = tmp_path_factory.mktemp("study") / "run"
    run = create_run(run_dir, "toy", {"eval": {"samples": 4}, "data": {"samples": 4}})
    pipe = build_pipeline(run.config.model)
    with torch.no_grad():  # the "aligned" model: a perturbed copy of the tiny transformer, saved as the trainer exports
        gen = torch.Generator().manual_seed(2)
        for p in pipe.transformer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    pipe.transformer.save_pretrained(run_dir / "train" / "single" / "transformer")
    stage = get_stage("eval")
    opts = {"model": "all", "eval_shards": 1}
    for variant in stage.variants(run, opts):
        stage.prepare_variant(run, variant, opts)
        execute_shard("eval", run.dir, 0, variant, opts)
        stage.finalize(run, variant, opts)
    return run


def test_study_page_records_blind_choices_resumes_and_agreement(study_run):
    run = study_run
    store = run.store("r")
    bright = {m: store.eval("synthetic", m).part("metrics")["brightness"][:] for m in ("baseline", "single")}
    ids = [str(x) for x in store.eval("synthetic", "baseline")["id"][:]]
    browser = DevTools()
    server, url = _start_study(run.dir)
    clicks = []
    try:
        browser.call("Page.navigate", url=url)
        browser.wait_for("document.getElementById('progress').textContent.includes('0 of 4')")
        for step in range(3):
            browser.wait_for("['input','left','right'].every(k => document.getElementById(k).complete && "
                             "document.getElementById(k).naturalWidth === 32)")
            item = int(browser.js("current.item"))
            left = "baseline" if left_is_a(3, ids[item]) else "single"
            right = "single" if left == "baseline" else "baseline"
            side = "left" if bright[left][item] > bright[right][item] else "right"  # the person prefers brighter
            assert "baseline" not in browser.js("document.body.innerText")  # blind: models are never named
            browser.js(f"document.getElementById('choose-{side}').click()")
            browser.wait_for(f"document.getElementById('progress').textContent.includes('{step + 1} of 4')")
            clicks.append((item, side, left, right))
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = choices_path(run.dir).read_text().splitlines()
    assert len(lines) == 3
    # restart: the page resumes at the fourth pair
    server, url = _start_study(run.dir)
    try:
        browser.call("Page.navigate", url=url)
        browser.wait_for("document.getElementById('progress').textContent.includes('3 of 4')")
        last = int(browser.js("current.item"))
        assert last not in [c[0] for c in clicks]
        browser.js("document.getElementById('choose-tie').click()")
        browser.wait_for("!document.getElementById('done').hidden")
    finally:
        server.terminate()
        server.wait(timeout=30)
        browser.close()
    saved = [json.loads(line) for line in choices_path(run.dir).read_text().splitlines()]
    assert len(saved) == 4 and lines == choices_path(run.dir).read_text().splitlines()[:3]  # append-only
    for record, (item, side, left, right) in zip(saved, clicks):
        assert (record["item"], record["choice"], record["left"], record["right"]) == (item, side, left, right)
        assert record["winner"] == (left if side == "left" else right)
    assert saved[3]["winner"] == "tie" and saved[3]["item"] == last

    proc = subprocess.run([sys.executable, "-m", "fyp.evaluation.agreement", "--run", str(run.dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "brightness" in proc.stdout and "ensemble" in proc.stdout and "kendall" in proc.stdout
    rows = {r["metric"]: r for r in csv.DictReader((run.dir / "study" / "agreement.csv").open())}
    # the person always chose the brighter result: brightness and the (brightness-only) ensemble agree fully
    for metric in ("brightness", "ensemble"):
        assert float(rows[metric]["accuracy"]) == 1.0 and rows[metric]["n_decisive"] == "3"
        assert rows[metric]["n_choices"] == "4"
    h = np.array([1 if r["winner"] == "single" else (-1 if r["winner"] == "baseline" else 0) for r in saved])
    d = np.array([bright["single"][r["item"]] - bright["baseline"][r["item"]] for r in saved])
    from scipy.stats import kendalltau

    assert float(rows["brightness"]["kendall_tau"]) == pytest.approx(kendalltau(h, d).statistic, abs=1e-4)
    assert float(rows["brightness"]["kendall_tau"]) > 0
