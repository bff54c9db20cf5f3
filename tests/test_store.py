"""The run store's layout on disk: blocks of samples, one file per block, named accessors, damage found."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fyp.store import (BLOCK_MAX, LAYOUT_VERSION, DamagedError, RunStore, Shape, StoreError, block_size, main,
                       shard_bounds)

REPO = Path(__file__).resolve().parent.parent
GROUPS = ("samples", "candidates", "scores", "pairs", "train", "eval")
STORE_PATH = re.compile(rf"^({'|'.join(GROUPS)})/")
RAW_ROOT = re.compile(r"(\bstore|RunStore\.open\([^)]*\)|\.store\([^)]*\))\.root\b")
# Strings that look like store paths and are not: (file, literal prefix) -> why.
NOT_STORE_PATHS = {
    ("fyp/dpo/train.py", "train/"): "a TensorBoard tag",
    ("tests/hpc/test_slurm_cluster.py", "eval/synthetic/"): "stage/variant labels of the job ledger",
}


def _strings(tree: ast.AST):
    """(line, text) of every string constant that is not a docstring (f-strings: their literal parts)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            yield node.lineno, node.values[0].value


def test_no_store_path_literal_or_raw_root_outside_the_store_module():
    found = []
    for folder in ("fyp", "hpc", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in ("fyp/store.py", "tests/test_store.py"):  # the layout's module and its own test
                continue
            source = path.read_text()
            for line, text in _strings(ast.parse(source)):
                if STORE_PATH.match(text) and not any(rel == f and text.startswith(p) for f, p in NOT_STORE_PATHS):
                    found.append(f"{rel}:{line}: {text!r}")
            for number, line in enumerate(source.splitlines(), 1):
                if RAW_ROOT.search(line):
                    found.append(f"{rel}:{number}: raw root access: {line.strip()}")
    assert not found, "store paths belong in fyp/store.py (use its accessors):\n" + "\n".join(found)


def test_the_checker_sees_literals_and_raw_root():
    """The scan above is not vacuous: it flags each kind of offence and skips docstrings."""
    code = 'def f(store):\n    """samples/image in a docstring"""\n    return store["samples/image"], f"scores/{r}/done", store.root\n'
    texts = [t for _, t in _strings(ast.parse(code))]
    assert sorted({t for t in texts if STORE_PATH.match(t)}) == ["samples/image", "scores/"]
    assert RAW_ROOT.search(code.splitlines()[2])


@pytest.mark.parametrize("n,shards,block", [(4, 2, 1), (8, 2, 2), (512, 8, 16), (8192, 8, 16), (10**6, 256, 128),
                                            (10**7, 1000, BLOCK_MAX)])
def test_block_size_rule(n, shards, block):
    assert block_size(n, shards) == block
    shape = Shape(n, 16, 512, 512, shards)
    assert shape.block == block and shape.shard_size % block == 0 and shape.shard_size * shards >= n
    starts = [shard_bounds(n, shards, s, block)[0] for s in range(shards)]
    assert all(s % block == 0 or s == n for s in starts)  # shards own whole blocks (trailing ones may be empty)


def _store(tmp_path, n=12, shards=2, k=3, res=8, **kw) -> RunStore:
    return RunStore.create(tmp_path, Shape(n, k, res, res, shards, **kw), ["clipscore"])


def test_one_file_per_block_in_one_directory_per_array(tmp_path):
    store = _store(tmp_path, n=12, shards=2)  # S = 6 -> block 2... rounded: block_size(12, 2) = 2
    b = store.shape.block
    assert b == 2 and store.shard_slice(1) == slice(6, 12)
    store.samples.image[0:12] = np.ones((12, 8, 8, 3), np.uint8)
    store.candidates.image[0:12] = np.zeros((12, 3, 8, 8, 3), np.uint8)  # fill-valued, still one file per block
    store.scores("clipscore").done[0:12] = np.zeros(12, bool)
    for array in (store.samples.image, store.candidates.image, store.scores("clipscore").done):
        folder = store.path / array.path
        files = sorted(p.name for p in folder.iterdir())
        assert files == sorted(["zarr.json"] + [store.block_file(array, s).name for s in range(0, 12, b)])
        assert all(p.is_file() for p in folder.iterdir())  # no nested directories per chunk
    np.testing.assert_array_equal(store.samples.image[5], np.ones((8, 8, 3), np.uint8))  # one sample reads alone


def test_old_layout_is_refused_with_one_line(tmp_path):
    store = _store(tmp_path)
    store.update_attrs(layout_version=1)
    with pytest.raises(StoreError, match=rf"store layout 1, this version of the suite reads layout {LAYOUT_VERSION} "
                                         r"only; prepare a new run") as err:
        RunStore.open(tmp_path)
    assert "\n" not in str(err.value)


def test_corrupt_root_metadata_is_one_line_naming_the_file(tmp_path):
    _store(tmp_path)
    (tmp_path / "store.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError) as err:
        RunStore.open(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'store.zarr' / 'zarr.json'} is damaged (") and "\n" not in str(err.value)


def test_corrupt_array_metadata_is_one_line_naming_the_file(tmp_path):
    store = _store(tmp_path)
    meta = store.block_file(store.scores("clipscore").value, 0).parent / "zarr.json"
    meta.write_text("[]")
    store = RunStore.open(tmp_path)
    with pytest.raises(StoreError, match=re.escape(f"{meta} is damaged (")):
        store.scores("clipscore").value


def _filled(tmp_path) -> RunStore:
    store = _store(tmp_path, n=8, shards=2)  # block 2: blocks 0-1, 2-3 (shard 0), 4-5, 6-7 (shard 1)
    rng = np.random.default_rng(0)
    store.candidates.image[:] = rng.integers(0, 256, (8, 3, 8, 8, 3), dtype=np.uint8)
    store.candidates.seed[:] = np.arange(24).reshape(8, 3)
    store.candidates.done[:] = True
    return store


def test_a_missing_or_truncated_block_of_a_done_sample_is_refused_naming_array_sample_and_fix(tmp_path):
    store = _filled(tmp_path)
    store.block_file(store.candidates.image, 4).unlink()
    with pytest.raises(DamagedError) as err:
        store.read_rows(store.candidates.image, [1, 5])
    message = str(err.value)
    assert "candidates/image is damaged at sample 4 (its block file is missing)" in message
    assert f"python -m fyp.store verify --run {tmp_path} --stage sample" in message and "\n" not in message
    path = store.block_file(store.candidates.image, 2)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DamagedError, match="candidates/image is damaged at sample 3"):
        store.read_rows(store.candidates.image, 3)
    np.testing.assert_array_equal(store.read_rows(store.candidates.image, 0), store.candidates.image[0])


def test_verify_marks_damaged_blocks_not_done_and_nothing_else(tmp_path, capsys):
    store = _filled(tmp_path)
    store.block_file(store.candidates.image, 4).unlink()
    truncated = store.block_file(store.candidates.seed, 0)
    truncated.write_bytes(truncated.read_bytes()[:5])
    assert main(["verify", "--run", str(tmp_path), "--stage", "sample", "--dry-run"]) == 1
    assert RunStore.open(tmp_path).candidates.done[:].all()  # dry run: nothing changed
    assert main(["verify", "--run", str(tmp_path), "--stage", "sample"]) == 1
    out = capsys.readouterr().out
    assert "sample: damaged: candidates/image samples 4-5: its block file is missing" in out
    assert "sample: damaged: candidates/seed samples 0-1:" in out and "sample: 2 damaged block(s) marked not done" in out
    done = RunStore.open(tmp_path).candidates.done[:]
    assert done.tolist() == [False, False, True, True, False, False, True, True]
    assert main(["verify", "--run", str(tmp_path), "--stage", "sample"]) == 0  # not-done blocks are not checked


def test_verify_command_line_and_bad_store(tmp_path):
    _filled(tmp_path)
    out = subprocess.run([sys.executable, "-m", "fyp.store", "verify", "--run", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "prepare: 0 damaged block(s)" in out.stdout and "score/clipscore: 0 damaged block(s)" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fyp.store", "verify", "--run", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no run store at" in bad.stderr


def test_status_and_pairs_say_a_corrupt_root_metadata_in_one_line(tmp_path, capsys):
    from hpc.submit import main as submit

    run_dir = tmp_path / "run"
    assert submit(["prepare", "--run", str(run_dir), "--preset", "tiny", "--samples", "4", "--shards", "2",
                   "--create-only"]) == 0
    meta = run_dir / "store.zarr" / "zarr.json"
    meta.write_text(meta.read_text()[:40])  # truncated, as by a full disk
    capsys.readouterr()
    assert submit(["status", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"store: {meta} is damaged (" in out
    assert submit(["pairs", "--run", str(run_dir)]) == 1  # its task fails, naming the file in one line
    failed = [line for line in capsys.readouterr().out.splitlines() if "FAILED  pairs shard 0" in line]
    assert len(failed) == 1 and f"StoreError: {meta} is damaged (" in failed[0]


def test_score_stops_on_a_damaged_candidate_block_and_verify_makes_sample_redo_it(tmp_path):
    """The silent wrong result of issue 12: a deleted candidate block read as black images and was scored.
    Now score stops with one line; verify marks the block not done; sample redoes exactly that block."""
    from fyp.data.stage import create_run
    from fyp.rewards.stage import score_shard
    from fyp.stages import execute_shard

    run = create_run(tmp_path / "run", "tiny", samples=8, shards=2, overrides={"data": {"resolution": 32},
                     "sampling": {"candidates": 2}})
    for shard in range(2):
        execute_shard("prepare", run.dir, shard)
    execute_shard("sample", run.dir, 1)  # shard 1: samples 4-7, blocks 4-5 and 6-7
    store = run.store()
    assert store.shape.block == 2 and store.candidates.done[4:].all()
    before = store.candidates.image[4:8]
    store.block_file(store.candidates.image, 6).unlink()
    with pytest.raises(DamagedError, match=r"candidates/image is damaged at sample 6 \(its block file is missing\)"):
        score_shard(run, 1, run.config.reward("clipscore"))
    assert not store.scores("clipscore").done[6:8].any()  # nothing scored from the damaged block
    assert store.verify("sample") == ["candidates/image samples 6-7: its block file is missing"]
    assert store.candidates.done[4:].tolist() == [True, True, False, False]
    counts = execute_shard("sample", run.dir, 1)
    assert counts["done"] == 2 and counts["skipped"] == 2  # only the damaged block is redone
    np.testing.assert_array_equal(run.store("r").candidates.image[4:8], before)  # bit-identical
    assert score_shard(run, 1, run.config.reward("clipscore"))["done"] == 4


def test_block_writer_writes_each_block_once_when_its_last_pending_row_is_finished(tmp_path):
    from fyp.store import BlockWriter

    store = _store(tmp_path, n=12, shards=2)  # block 2, shard 1 = samples 6-11 = blocks 6-7, 8-9, 10-11
    span = store.shard_slice(1)
    scores = store.scores("clipscore")
    values, done = np.full((6, 3), np.nan, np.float32), np.zeros(6, bool)
    pending = np.array([1, 1, 0, 0, 1, 0], bool)  # block 8-9 has nothing to do and nothing touched
    touched = np.array([0, 0, 0, 0, 0, 1], bool)  # an invalid sample marked done in block 10-11
    done[5] = True
    writer = BlockWriter(store, span, [scores.value, scores.done], [values, done], pending, touched)
    writer.finish()
    assert writer.writes == 0  # block 10-11 still has sample 10 pending
    values[0], done[0] = 1.0, True
    writer.finish([0])
    assert writer.writes == 0 and not scores.done[6]  # block 6-7 waits for sample 7
    values[[1, 4]], done[[1, 4]] = 2.0, True
    writer.finish([1, 4])
    assert writer.writes == 2 and not writer.left
    assert scores.done[:].tolist() == [False] * 6 + [True, True, False, False, True, True]
    assert np.isfinite(scores.value[6:8]).all() and np.isnan(scores.value[8:10]).all()
    assert not store.block_file(scores.done, 8).exists()  # a block nobody touched is never written
