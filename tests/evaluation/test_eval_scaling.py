"""Scaling studies: the sweep plan, nested sample subsets of a pairs set, and metric-vs-scale plots."""
import numpy as np
import pytest

from fyp.data.stage import create_run
from fyp.evaluation.scaling import candidate_steps, main, plot_scaling, sample_steps, scaling_rows
from fyp.evaluation.summary import rows_to_csv, summarize


@pytest.fixture()
def run(tmp_path):
    return create_run(tmp_path / "run", "toy", {"data": {"samples": 12}})


def test_candidate_sweep_plans_pairs_train_eval_per_scale(run, capsys):
    steps = candidate_steps(run, [2, 4])
    assert steps[0] == ["pairs", "--run", str(run.dir), "--method", "single", "--reward", "brightness",
                        "--candidates", "2", "--name", "brightness-k2"]
    assert steps[1] == ["train", "--run", str(run.dir), "--pairs", "brightness-k2"]
    assert steps[2] == ["eval", "--run", str(run.dir), "--model", "brightness-k2"]
    assert len(steps) == 6
    with pytest.raises(ValueError, match="within 2..K=4"):
        candidate_steps(run, [8])
    assert main(["plan", "--run", str(run.dir)]) == 0
    assert "--candidates 4 --name brightness-k4" in capsys.readouterr().out


def test_sample_subsets_are_nested_and_keep_pairs(run):
    store = run.store()
    n = store.shape.n
    winner = np.arange(n, dtype=np.int32) % 4
    loser = (winner + 1) % 4
    valid = np.ones(n, bool)
    valid[3] = False  # an invalid pair is never drawn
    for key, values, dtype, fill in (("winner", winner, "int32", -1), ("loser", loser, "int32", -1),
                                     ("margin", np.full(n, np.nan, np.float32), "float32", float("nan")),
                                     ("valid", valid, "bool", False)):
        store.pairs("single").create_array(key, shape=(n,), chunks=(n,), dtype=dtype, fill_value=fill)[:] = values
    steps = sample_steps(run, [4, 8], pairs="single")
    assert steps == [["train", "--run", str(run.dir), "--pairs", "single-n4"],
                     ["eval", "--run", str(run.dir), "--model", "single-n4"],
                     ["train", "--run", str(run.dir), "--pairs", "single-n8"],
                     ["eval", "--run", str(run.dir), "--model", "single-n8"]]
    store = run.store("r")
    small, large = store.pairs("single-n4").valid[:], store.pairs("single-n8").valid[:]
    assert small.sum() == 4 and large.sum() == 8 and not small[3] and not large[3]
    assert np.all(large[small])  # nested
    w = store.pairs("single-n8").winner[:]
    assert np.array_equal(w[large], winner[large]) and np.all(w[~large] == -1)
    assert store.pairs("single-n4").attrs["subset_of"] == "single"
    with pytest.raises(ValueError, match="outside 1..11"):
        sample_steps(run, [50], pairs="single")


def test_plot_scaling_from_summary(run):
    rows = summarize("baseline", "synthetic", {"brightness": np.array([0.3, 0.31])})
    for k, level in ((2, 0.32), (4, 0.35), (8, 0.4)):
        rows += summarize(f"single-k{k}", "synthetic", {"brightness": np.array([level, level + 0.01]),
                                                        "hole_luminance": np.array([level, level])})
    (run.dir / "eval").mkdir()
    (run.dir / "eval" / "summary.csv").write_text(rows_to_csv(rows))
    paths = plot_scaling(run.dir)
    assert [p.name for p in paths] == ["candidates-brightness.png"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    points = scaling_rows(rows, "candidates")
    assert [p["scale"] for p in points if p["metric"] == "brightness"] == [2, 4, 8]
    text = (run.dir / "eval" / "scaling" / "candidates.csv").read_text().splitlines()
    assert text[0].startswith("benchmark,metric,pairs,scale") and len(text) == 7


@pytest.mark.timeout(600)
def test_candidate_sweep_launches_end_to_end_and_skips_done_steps(tmp_path, capsys, monkeypatch):
    """`hpc.submit scaling launch` on the local executor: pairs, train and eval per k', then the baseline; a
    failed step stops the launch, a second launch skips every step, and `plot` draws one point per scale."""
    from fyp.dpo.train import export_dir
    from fyp.stages import execute_shard
    from hpc.submit import main as submit

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model: threads only add contention on a shared box
    run = create_run(tmp_path / "run", "toy", {
        "shards": 1, "data": {"samples": 4}, "sampling": {"steps": 2}, "eval": {"samples": 2},
        "train": {"steps": 2, "warmup_steps": 0, "checkpoint_every": 2}})
    for stage in ("prepare", "sample"):
        execute_shard(stage, run.dir, 0)
    launch = ["scaling", "launch", "--run", str(run.dir), "--scales", "2,4"]

    assert submit(launch) == 1  # not scored yet: the first pairs step fails and nothing after it runs
    err = capsys.readouterr().err
    assert "scaling: stopped at step 1/7 (python -m hpc.submit pairs" in err and "exit code 1" in err
    assert not (run.dir / "train").exists()

    execute_shard("score", run.dir, 0, "brightness")
    assert submit(launch) == 0
    out = capsys.readouterr().out
    assert "nothing to do, every shard is done" not in out and "7/7 steps done" in out
    store = run.store("r")
    for k in (2, 4):
        name = f"brightness-k{k}"
        valid = store.pairs(name).valid[:]
        assert valid.all() and store.pairs(name).attrs["candidates"] == k
        assert store.pairs(name).winner[:].max() < k and store.pairs(name).loser[:].max() < k
        assert (export_dir(run.dir, name) / "config.json").exists()
        assert (run.dir / "train" / name / "done.json").exists()
    summary = (run.dir / "eval" / "summary.csv").read_text()
    assert {line.split(",")[0] for line in summary.splitlines()[1:]} == {"baseline", "brightness-k2", "brightness-k4"}

    assert submit(launch) == 0  # every step is done: each says so and runs no task
    out = capsys.readouterr().out
    assert out.count("nothing to do, every shard is done") == 7 and "running" not in out

    assert submit(["scaling", "plot", "--run", str(run.dir)]) == 0
    assert (run.dir / "eval" / "scaling" / "candidates-brightness.png").read_bytes()[:4] == b"\x89PNG"
    lines = (run.dir / "eval" / "scaling" / "candidates.csv").read_text().splitlines()
    brightness = [line.split(",") for line in lines[1:] if line.split(",")[1] == "brightness"]
    assert [(row[2], row[3], row[7]) for row in brightness] == [("brightness", "2", "2"), ("brightness", "4", "2")]
