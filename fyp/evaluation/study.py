"""The human A/B study: a small local web page that shows blind pairs and records which result a person prefers.

    python -m fyp.evaluation.study --run DIR --a baseline --b MODEL [--benchmark B] [--port 8765] [--seed 0]

It serves http://127.0.0.1:PORT/ (loopback only). Each page shows an item's prompt, its masked input, and the
two models' blended results side by side; which model is on the left is randomised per item, seeded by
(--seed, item id), and the page never names the models. The person clicks "Left is better", "Right is better"
or "Tie". Every choice is appended as one JSON line to `<run>/study/choices.jsonl` (flushed and fsynced; the
file is only ever appended to) with the item, both models, which was on the left, the click and the winning
model. The item order is a seeded permutation of the items both models have valid results for; on a restart
the page resumes at the first item of this (benchmark, a, b) comparison that has no choice yet.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from ..run import Run
from .plots import masked_input

CHOICES = ("left", "right", "tie")
PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Which inpainting is better?</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1000px}img{width:256px;height:256px;
image-rendering:pixelated;border:1px solid #ccc}.row{display:flex;gap:24px;align-items:flex-start}
button{font-size:16px;padding:8px 16px;margin:8px}#prompt{font-size:18px;margin:12px 0}.col{text-align:center}</style>
</head><body><h1>Which inpainting is better?</h1><p id="progress"></p><p id="prompt"></p>
<div class="row" id="pair"><div class="col"><img id="input" alt="masked input"><br>input (hole in magenta)</div>
<div class="col"><img id="left" alt="left result"><br>left</div><div class="col"><img id="right" alt="right result"><br>right</div></div>
<div id="buttons"><button id="choose-left">Left is better</button><button id="choose-right">Right is better</button>
<button id="choose-tie">Tie</button></div><p id="done" hidden>All pairs are done. Thank you!</p>
<script>
let current = null;
function show(state) {
  current = state;
  document.getElementById('progress').textContent = state.answered + ' of ' + state.total + ' answered';
  if (state.done) {
    document.getElementById('pair').hidden = true; document.getElementById('buttons').hidden = true;
    document.getElementById('prompt').hidden = true; document.getElementById('done').hidden = false; return;
  }
  document.getElementById('prompt').textContent = 'Prompt: "' + state.prompt + '"';
  for (const k of ['input', 'left', 'right']) document.getElementById(k).src = '/image/' + k + '/' + state.item;
}
async function refresh() { show(await (await fetch('/api/next')).json()); }
async function choose(choice) {
  if (!current || current.done) return;
  const r = await fetch('/api/choice', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                        body: JSON.stringify({item: current.item, choice: choice})});
  show(await r.json());
}
for (const c of ['left', 'right', 'tie']) document.getElementById('choose-' + c).onclick = () => choose(c);
refresh();
</script></body></html>"""


def choices_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / "study" / "choices.jsonl"


def read_choices(run_dir: Path | str) -> list[dict]:
    """Every recorded choice; a torn last line (a crash mid-write) is ignored."""
    path = choices_path(run_dir)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def left_is_a(seed: int, item_id: str) -> bool:
    digest = hashlib.sha256(f"fyp-study:{seed}:{item_id}".encode()).digest()
    return bool(digest[0] & 1)


@dataclass
class Study:
    run: Run
    benchmark: str
    a: str
    b: str
    seed: int = 0

    def __post_init__(self):
        store = self.run.store(mode="r")
        groups = {}
        for model in (self.a, self.b):
            group = store.eval(self.benchmark, model)
            if "image" not in group:
                raise SystemExit(f"study: no eval results for {model} on {self.benchmark}; run `python -m hpc.submit "
                                 f"eval --run {self.run.dir} --benchmark {self.benchmark} --model {model}` first")
            groups[model] = group
        ga, gb = groups[self.a], groups[self.b]
        valid = np.asarray(ga["valid"][:], bool) & np.asarray(gb["valid"][:], bool)
        self.ids = [str(x) for x in ga["id"][:]]
        self.prompts = [str(x) for x in ga["prompt"][:]]
        self.images = {self.a: ga["image"], self.b: gb["image"]}
        self.data = ga.attrs["data"]
        order = np.random.default_rng([self.seed, 1]).permutation(np.flatnonzero(valid))
        self.order = [int(i) for i in order]
        self.lock = threading.Lock()
        self._reader = None

    def key(self) -> tuple:
        return (self.benchmark, *sorted((self.a, self.b)))

    def answered(self) -> set[int]:
        return {c["item"] for c in read_choices(self.run.dir)
                if (c.get("benchmark"), *sorted((c.get("a"), c.get("b")))) == self.key()}

    def next_state(self) -> dict:
        done = self.answered()
        todo = [i for i in self.order if i not in done]
        state = dict(total=len(self.order), answered=len(self.order) - len(todo), done=not todo)
        if todo:
            state.update(item=todo[0], prompt=self.prompts[todo[0]])
        return state

    def sides(self, item: int) -> tuple[str, str]:
        return (self.a, self.b) if left_is_a(self.seed, self.ids[item]) else (self.b, self.a)

    def image(self, kind: str, item: int) -> bytes:
        if kind == "input":
            if self._reader is None:
                from ..config import DataConfig
                from ..data.registry import build_reader

                self._reader = build_reader(DataConfig(**self.data), self.run.config.seed)
            sample = self._reader[item]
            return _png(masked_input(sample.image, sample.mask))
        left, right = self.sides(item)
        return _png(self.images[left if kind == "left" else right][item])

    def record(self, item: int, choice: str) -> dict:
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}")
        if item not in self.order:
            raise ValueError(f"item {item} is not in this study")
        with self.lock:
            if item in self.answered():
                return self.next_state()  # a double click: the first choice stands
            left, right = self.sides(item)
            winner = {"left": left, "right": right, "tie": "tie"}[choice]
            line = dict(time=time.time(), benchmark=self.benchmark, a=self.a, b=self.b, item=item, id=self.ids[item],
                        prompt=self.prompts[item], left=left, right=right, choice=choice, winner=winner)
            path = choices_path(self.run.dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:  # append-only
                handle.write(json.dumps(line) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        return self.next_state()


def make_handler(study: Study):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: one line per choice is logged by the caller
            pass

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value, code: int = 200) -> None:
            self._send(code, json.dumps(value).encode(), "application/json")

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path in ("/", "/index.html"):
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            if self.path == "/api/next":
                return self._json(study.next_state())
            parts = self.path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "image" and parts[1] in ("input", "left", "right") and parts[2].isdigit():
                item = int(parts[2])
                if item in study.order:
                    return self._send(200, study.image(parts[1], item), "image/png")
            return self._json({"error": f"not found: {self.path}"}, 404)

        def do_POST(self):  # noqa: N802
            if self.path != "/api/choice":
                return self._json({"error": f"not found: {self.path}"}, 404)
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                return self._json(study.record(int(body["item"]), str(body["choice"])))
            except (ValueError, KeyError, TypeError) as exc:
                return self._json({"error": str(exc)}, 400)

    return Handler


def serve(study: Study, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A started server (in a daemon thread); `server.server_address` has the port."""
    server = ThreadingHTTPServer((host, port), make_handler(study))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _default_benchmark(run: Run, a: str, b: str) -> str:
    benches = sorted(p.parent.parent.name for p in (run.dir / "eval").glob(f"*/{a}/summary.csv")
                     if (p.parent.parent / b / "summary.csv").exists())
    if not benches:
        raise SystemExit(f"study: no benchmark has eval results for both {a} and {b}; run the eval stage first")
    return benches[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc.submit study", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--a", default="baseline", help="first model (default: baseline)")
    parser.add_argument("--b", required=True, help="second model (an evaluated model name)")
    parser.add_argument("--benchmark", default=None, help="default: the first benchmark both models were evaluated on")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 = any free port")
    parser.add_argument("--seed", type=int, default=0, help="seeds the item order and the left/right sides")
    args = parser.parse_args(argv)
    if args.a == args.b:
        parser.error("--a and --b must be different models")
    run = Run.open(args.run)
    study = Study(run, args.benchmark or _default_benchmark(run, args.a, args.b), args.a, args.b, args.seed)
    server = serve(study, args.host, args.port)
    host, port = server.server_address[:2]
    state = study.next_state()
    print(f"study: {study.benchmark}, {args.a} vs {args.b}: {state['answered']} of {state['total']} pairs answered; "
          f"open http://{host}:{port}/ (Ctrl-C to stop; choices go to {choices_path(run.dir)})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
