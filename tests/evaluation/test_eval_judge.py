"""The judge inside eval metrics: an OpenAI-compatible HTTP judge on loopback that answers the rubric for some
items and garbage for others, and the tiny local VLM judge (random weights: its answers are garbage).
Garbage gives NaN and counted failures, never an exception."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from fyp.evaluation.scoring import Items, MetricSet, judge_metrics


def _items(n=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3)).astype(np.uint8)
    masks = np.zeros((n, 32, 32), np.uint8)
    masks[:, 8:20, 8:20] = 1
    return Items(images, images.copy(), masks, ["a red circle", "GARBAGE please", "a blue square"][:n])


class FakeJudgeServer(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"][-1]["text"]
        if "Rate this image" in text:
            answer = '{"brightness": 7, "composition": "4/10", "colour": 12}'  # 12 is clamped to 10
        elif "GARBAGE" in text:
            answer = "I cannot judge this image, sorry."
        else:
            answer = "```json\n{\"aesthetic\": 36, \"structural\": 24, \"semantic\": \"27\", \"reason\": \"ok\"}\n```"
        data = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudgeServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_http_judge_scores_variants_bias_and_counts_garbage(judge_url):
    out = MetricSet()
    judge_metrics({"backend": "http", "base_url": judge_url, "model": "judge", "api_key_env": "FYP_NO_KEY",
                   "max_retries": 0, "variants": ["40-30-30", "30-40-30"]}, _items(), out)
    total = out.values["judge_total"]
    assert total[0] == pytest.approx(100 * (36 + 24 + 27) / 100) and np.isnan(total[1])
    assert out.failures["judge_total"] == 1
    # 30-40-30: aesthetic 36 is clamped to its 30-point maximum
    assert out.values["judge_total_30-40-30"][0] == pytest.approx(100 * (30 + 24 + 27) / 100)
    assert out.values["judge_brightness"].tolist() == [7, 7, 7] and out.values["judge_colour"].tolist() == [10, 10, 10]
    assert out.values["judge_composition"][0] == 4


def test_unreachable_judge_gives_nan_not_a_crash():
    out = MetricSet()
    judge_metrics({"backend": "http", "base_url": "http://127.0.0.1:9/v1", "model": "judge", "max_retries": 0,
                   "variants": ["40-30-30"], "bias": False}, _items(2), out)
    assert np.isnan(out.values["judge_total"]).all() and out.failures["judge_total"] == 2


def test_tiny_local_judge_garbage_is_counted():
    out = MetricSet()
    judge_metrics({"tiny": True, "variants": ["40-30-30"], "bias": False}, _items(2), out)
    assert np.isnan(out.values["judge_total"]).all() and out.failures["judge_total"] == 2


def test_eval_stage_runs_the_configured_judge(judge_url, tmp_path):
    import csv

    from fyp.data.stage import create_run
    from fyp.stages import execute_shard, get_stage

    judge = {"backend": "http", "base_url": judge_url, "model": "judge", "max_retries": 0,
             "variants": ["40-30-30", "33-33-33"]}
    run = create_run(tmp_path / "run", "toy", {"data": {"samples": 2}, "eval": {"samples": 2, "judge": judge}})
    opts = {"model": "baseline", "eval_shards": 1}
    get_stage("eval").prepare_variant(run, "synthetic/baseline", opts)
    counts = execute_shard("eval", run.dir, 0, "synthetic/baseline", opts)
    get_stage("eval").finalize(run, "synthetic/baseline", opts)
    assert counts["done"] == 2 and counts["metric_failures"] == 0
    rows = {r["metric"]: r for r in csv.DictReader((run.dir / "eval" / "summary.csv").open())}
    assert float(rows["judge_total"]["mean"]) == pytest.approx(87.0) and rows["judge_total"]["n"] == "2"
    assert float(rows["judge_total_33-33-33"]["mean"]) == pytest.approx(100 * (33 + 24 + 27) / 99)
    assert float(rows["judge_brightness"]["mean"]) == 7.0
    assert "judge_brightness" in (run.dir / "eval" / "bias_table.md").read_text()
