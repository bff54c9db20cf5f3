"""Bad input never stops a shard: every kind comes back invalid with its reason, counted, shard done."""
import json
import tarfile

import numpy as np

from fyp import stages
from fyp.config import DataConfig
from fyp.data import build_reader
from fyp.data.rle import rle_encode
from fyp.data.stage import create_run
from fyp.store import RunStore
from fixtures_data import (asymmetric_mask, brushdata_record, encode, image_array, write_brushbench,
                           write_editbench, write_rorem, write_tar)

RES = 32


def bad_brushdata_records():
    """(record, expected reason prefix or None for a good one), one per kind of bad input."""
    img = image_array(RES, RES)
    good = brushdata_record("good0", img, caption="fine")
    png = encode(img)

    def variant(key, **changes):
        rec = {k.replace("good0", key): v for k, v in good.items()}
        for field, value in changes.items():
            rec[f"{key}.{field}"] = value
        return rec

    no_caption = {k: v for k, v in variant("nocap").items() if not k.endswith(".caption")}
    return [
        (good, None),
        (variant("corrupt", png=b"\x89PNG\r\n\x1a\n this is not a png"), "corrupt image"),
        (variant("truncated", png=png[: len(png) // 2]), "corrupt image"),
        (variant("wrongsize", height=b"40"), "mask size mismatch"),
        (variant("emptyrle", segmentation=json.dumps({"mask": [[]]}).encode()), "empty mask"),
        (variant("nomasks", segmentation=json.dumps({"mask": []}).encode()), "empty mask"),
        (variant("full", segmentation=json.dumps({"mask": [[1, RES * RES]]}).encode()), "full mask"),
        (variant("noprompt", caption=b"   "), "missing prompt"),
        (no_caption, "missing prompt"),
        (variant("oddrle", segmentation=json.dumps({"mask": [[3, 4, 9]]}).encode()), "undecodable rle"),
        (variant("pastend", segmentation=json.dumps({"mask": [[RES * RES - 2, 10]]}).encode()), "undecodable rle"),
        (variant("notjson", segmentation=b"{mask: oops"), "bad record"),
        (brushdata_record("good1", image_array(RES, RES, 3), caption="also fine"), None),
    ]


def test_each_bad_kind_is_invalid_with_its_reason(tmp_path):
    cases = bad_brushdata_records()
    tar = write_tar(tmp_path / "bad.tar", [rec for rec, _ in cases])
    reader = build_reader(DataConfig(kind="brushdata", path=str(tar), resolution=RES), 0)
    assert len(reader) == len(cases)
    for i, (_, expected) in enumerate(cases):
        s = reader[i]
        if expected is None:
            assert s.valid and s.reason == "", s.reason
        else:
            assert not s.valid and s.reason.startswith(expected + ":") and "\n" not in s.reason, (i, s.reason)
            assert s.image.shape == (RES, RES, 3) and not s.image.any() and not s.mask.any()
            assert s.id == reader.item_id(i)


def test_truncated_tar_keeps_the_records_before_the_cut(tmp_path):
    recs = [brushdata_record(f"r{i}", image_array(RES, RES, i)) for i in range(3)]
    # Put r2's image last in the tar, so cutting inside it leaves every field of r2 indexed.
    recs[2] = {k: v for k, v in sorted(recs[2].items(), key=lambda kv: kv[0].endswith(".png"))}
    tar = write_tar(tmp_path / "t.tar", recs)
    with tarfile.open(tar) as archive:
        last_image = next(m for m in archive.getmembers() if m.name == "r2.png")
    full = tar.read_bytes()
    tar.write_bytes(full[: last_image.offset_data + last_image.size // 2])  # cut inside r2's image
    reader = build_reader(DataConfig(kind="brushdata", path=str(tar), resolution=RES), 0)
    assert len(reader) == 3 and [reader[i].valid for i in range(2)] == [True, True]
    assert reader[2].reason.startswith("corrupt image: image of r2 is truncated")
    tar.write_bytes(full[: last_image.offset_data - 600])  # cut before r2's image header
    reader = build_reader(DataConfig(kind="brushdata", path=str(tar), resolution=RES), 0)
    assert [reader[i].valid for i in range(2)] == [True, True]
    assert len(reader) == 3 and reader[2].reason.startswith("bad record: record r2 lacks field(s) image")


def test_benchmark_readers_bad_items(tmp_path):
    img = image_array(RES, RES)
    m = asymmetric_mask(RES, RES)
    items = {
        "ok": {"image": "a.png", "caption": "c", "inpainting_mask": rle_encode(m, order="C"), "outpainting_mask": []},
        "nocaption": {"image": "a.png", "caption": "", "inpainting_mask": rle_encode(m, order="C")},
        "missingimage": {"image": "gone.png", "caption": "c", "inpainting_mask": rle_encode(m, order="C")},
        "badrle": {"image": "a.png", "caption": "c", "inpainting_mask": [1, 2, "x", 4]},
        "nomask": {"image": "a.png", "caption": "c"},
    }
    write_brushbench(tmp_path / "bb", items, {"a.png": img})
    reader = build_reader(DataConfig(kind="brushbench", path=str(tmp_path / "bb"), resolution=RES), 0)
    reasons = {reader.item_id(i): reader[i].reason.split(":")[0] for i in range(len(reader))}
    assert reasons == {"ok": "", "nocaption": "missing prompt", "missingimage": "missing file",
                       "badrle": "undecodable rle", "nomask": "bad record"}

    rows = {"natural": [
        {"aos": "ok", "prompt_full": "f", "prompt_mask-simple": "s", "prompt_mask-rich": "r"},
        {"aos": "small", "prompt_full": "f", "prompt_mask-simple": "s", "prompt_mask-rich": "r"},
        {"aos": "noprompt", "prompt_full": "f", "prompt_mask-simple": "", "prompt_mask-rich": "r"},
        {"aos": "nomaskfile", "prompt_full": "f", "prompt_mask-simple": "s", "prompt_mask-rich": "r"},
    ]}
    images = {("natural", a): img for a in ("ok", "small", "noprompt", "nomaskfile")}
    masks = {("natural", "ok"): m * 255, ("natural", "small"): np.full((16, 16), 255, np.uint8),
             ("natural", "noprompt"): m * 255}
    write_editbench(tmp_path / "eb", rows, images, masks)
    reader = build_reader(DataConfig(kind="editbench", path=str(tmp_path / "eb"), resolution=RES), 0)
    assert [reader[i].reason.split(":")[0] for i in range(4)] == ["", "mask size mismatch", "missing prompt", "missing file"]

    write_rorem(tmp_path / "rr", {"ok": (img, m * 255, img), "badgt": (img, m * 255, image_array(16, 16)),
                                  "fullmask": (img, np.full((RES, RES), 255, np.uint8), img)})
    (tmp_path / "rr" / "GT" / "ok.png").write_bytes(b"garbage")
    reader = build_reader(DataConfig(kind="rorem", path=str(tmp_path / "rr"), resolution=RES), 0)
    assert [reader[i].reason.split(":")[0] for i in range(3)] == ["corrupt image", "target size mismatch", "full mask"]


def test_prepare_shard_completes_and_counts_bad_input(tmp_path):
    cases = bad_brushdata_records()
    tar = write_tar(tmp_path / "data" / "bad.tar", [rec for rec, _ in cases])
    run_dir = tmp_path / "run"
    run = create_run(run_dir, "tiny", overrides={"data": {"kind": "brushdata", "path": str(tar), "resolution": RES}},
                     samples=0, shards=2)
    store = RunStore.open(run_dir)
    assert store.shape.n == len(cases) and store.shape.height == RES
    assert (run_dir / "cache" / "brushdata-index.npz").is_file()  # indexed once at create_run, reused by tasks
    counts = [stages.execute_shard("prepare", run_dir, s) for s in range(2)]
    split = store.shard_slice(0).stop  # shard 0 holds whole blocks: 8 of the 13 samples
    assert split == 8
    expected_invalid = [sum(e is not None for _, e in cases[:split]), sum(e is not None for _, e in cases[split:])]
    assert [c["invalid"] for c in counts] == expected_invalid
    assert [c["done"] for c in counts] == [split, len(cases) - split]
    stage = stages.get_stage("prepare")
    assert stage.pending_shards(run, None, {}) == [] and stage.progress(run, None, {}) == (len(cases), len(cases))
    records = run.task_records("prepare")
    assert [r["state"] for r in records] == ["done", "done"] and [r["invalid"] for r in records] == expected_invalid

    valid, reasons = store.samples.valid[:], store.samples.reason[:]
    for i, (_, expected) in enumerate(cases):
        assert bool(valid[i]) == (expected is None)
        assert (str(reasons[i]).split(":")[0] if expected else str(reasons[i])) == (expected or "")
    images = store.samples.image[:]
    assert not images[~valid].any() and images[valid].any()
    assert list(store.samples.prompt[:][valid]) == ["fine", "also fine"]

    stage.finalize(run, None, {})
    summary = RunStore.open(run_dir).samples.attrs
    assert summary["valid"] == 2 and summary["invalid"] == len(cases) - 2
    assert summary["invalid_by_kind"] == {"bad record": 1, "corrupt image": 2, "empty mask": 2, "full mask": 1,
                                          "mask size mismatch": 1, "missing prompt": 2, "undecodable rle": 2}


def test_dataset_check_command(tmp_path, capsys):
    from fyp.data.__main__ import main

    cases = bad_brushdata_records()
    tar = write_tar(tmp_path / "bad.tar", [rec for rec, _ in cases])
    assert main(["--kind", "brushdata", "--path", str(tar), "--resolution", str(RES), "--limit", "0"]) == 0
    out = capsys.readouterr().out
    assert f"read {len(cases)}: 2 valid, {len(cases) - 2} invalid" in out
    assert "  undecodable rle: 2" in out and "bad/corrupt: corrupt image:" in out
    assert main(["--kind", "brushdata", "--path", str(tmp_path / "none.tar")]) == 2
    assert "does not exist" in capsys.readouterr().err
