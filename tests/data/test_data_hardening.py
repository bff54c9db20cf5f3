"""Inputs that used to give silently wrong data: 16-bit images, metadata paths that leave the dataset folder,
reasons that changed from run to run, files written unreadable (0600). Real files on disk, real readers."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from fyp.config import DataConfig
from fyp.data import build_reader
from fyp.data.rle import rle_encode
from fyp.data.sample import one_line
from fyp.data.transforms import decode_image, decode_mask_image, to_8bit
from fyp.run import Run, atomic_write_text, umask_mode
from fixtures_data import (asymmetric_mask, brushdata_record, image_array, write_brushbench, write_editbench,
                           write_png, write_rorem, write_tar)

RES = 32


def grey16(seed: int = 0) -> np.ndarray:
    """A 16-bit greyscale gradient over the whole 0-65535 range (most of it above 255: PIL's convert clips)."""
    ys, xs = np.mgrid[0:RES, 0:RES]
    return ((xs * RES + ys + seed) * 65535 // (RES * RES)).astype(np.uint16)


def expected_rgb(values: np.ndarray) -> np.ndarray:
    grey = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


# -- 16-bit images: scaled to 8 bits in every reader -------------------------------------------------------
def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = grey16()
    path = write_png(tmp_path / "g16.png", values)
    assert Image.open(path).mode == "I;16"
    image = np.asarray(decode_image(path=path))
    np.testing.assert_array_equal(image, expected_rgb(values))
    assert image.min() == 0 and image.max() == 255 and 100 < image.mean() < 155  # not white
    assert (np.asarray(Image.open(path).convert("RGB")) == 255).mean() > 0.9  # what PIL alone gives


def test_other_high_bit_modes(tmp_path):
    values = grey16()
    ints = Image.fromarray(values.astype(np.int32))  # mode I (PIL's mode for 16/32-bit integer TIFFs)
    ints.save(tmp_path / "i32.tif")
    np.testing.assert_array_equal(np.asarray(decode_image(path=tmp_path / "i32.tif")), expected_rgb(values))
    unit = Image.fromarray(values.astype(np.float32) / 65535)  # mode F, 0-1
    assert unit.mode == "F"
    np.testing.assert_array_equal(np.asarray(to_8bit(unit)), expected_rgb(values)[..., 0])
    eight = Image.fromarray((values // 257).astype(np.float32))  # mode F holding 0-255 values
    np.testing.assert_array_equal(np.asarray(to_8bit(eight)), (values // 257).astype(np.uint8))


def test_sixteen_bit_masks(tmp_path):
    mask = asymmetric_mask(RES, RES)
    write_png(tmp_path / "m65535.png", mask.astype(np.uint16) * 65535)
    write_png(tmp_path / "m01.png", mask.astype(np.uint16))
    write_png(tmp_path / "m300.png", mask.astype(np.uint16) * 300)  # 300/65535: a near-black 16-bit level
    np.testing.assert_array_equal(decode_mask_image(tmp_path / "m65535.png"), mask)
    np.testing.assert_array_equal(decode_mask_image(tmp_path / "m01.png"), mask)
    assert not decode_mask_image(tmp_path / "m300.png").any()  # dark grey is not a hole (clipping said 255)


def test_every_reader_scales_sixteen_bit_images(tmp_path):
    values, mask = grey16(), asymmetric_mask(RES, RES)
    want = expected_rgb(values)
    # BrushData: the image bytes in the tar are a 16-bit PNG
    tar = write_tar(tmp_path / "bd.tar", [brushdata_record("k", values)])
    sample = build_reader(DataConfig(kind="brushdata", path=str(tar), resolution=RES), 0)[0]
    assert sample.valid, sample.reason
    np.testing.assert_array_equal(sample.image, want)
    # BrushBench
    write_brushbench(tmp_path / "bb", {"a": {"image": "a.png", "caption": "c",
                                             "inpainting_mask": rle_encode(mask, order="C")}}, {"a.png": values})
    sample = build_reader(DataConfig(kind="brushbench", path=str(tmp_path / "bb"), resolution=RES), 0)[0]
    assert sample.valid and np.array_equal(sample.image, want) and np.array_equal(sample.mask, mask)
    # EditBench (16-bit image and a 16-bit 0/65535 mask)
    row = {"aos": "a", "prompt_full": "f", "prompt_mask-simple": "s", "prompt_mask-rich": "r"}
    write_editbench(tmp_path / "eb", {"natural": [row]}, {("natural", "a"): values},
                    {("natural", "a"): mask.astype(np.uint16) * 65535})
    sample = build_reader(DataConfig(kind="editbench", path=str(tmp_path / "eb"), resolution=RES), 0)[0]
    assert sample.valid and np.array_equal(sample.image, want) and np.array_equal(sample.mask, mask)
    # RORem: 16-bit source, mask and ground truth
    write_rorem(tmp_path / "rr", {"a": (values, mask.astype(np.uint16) * 65535, grey16(seed=7))})
    sample = build_reader(DataConfig(kind="rorem", path=str(tmp_path / "rr"), resolution=RES), 0)[0]
    assert sample.valid and np.array_equal(sample.image, want) and np.array_equal(sample.mask, mask)
    np.testing.assert_array_equal(sample.target, expected_rgb(grey16(seed=7)))


# -- metadata paths stay inside the dataset folder ----------------------------------------------------------
@pytest.fixture
def outside(tmp_path):
    """A readable image just outside the dataset folders (what a traversal would read)."""
    return write_png(tmp_path / "outside.png", image_array(RES, RES))


def test_brushbench_paths_confined(tmp_path, outside):
    m = rle_encode(asymmetric_mask(RES, RES), order="C")
    items = {name: {"image": path, "caption": "c", "inpainting_mask": m}
             for name, path in (("ok", "sub/a.png"), ("up", "../outside.png"), ("abs", str(outside)),
                                ("sneaky", "sub/../../outside.png"), ("inner", "sub/../sub/a.png"))}
    write_brushbench(tmp_path / "bb", items, {"sub/a.png": image_array(RES, RES)})
    reader = build_reader(DataConfig(kind="brushbench", path=str(tmp_path / "bb"), resolution=RES), 0)
    got = {reader.item_id(i): reader[i] for i in range(len(reader))}
    assert got["ok"].valid and got["inner"].valid
    for name, path in (("up", "../outside.png"), ("abs", str(outside)), ("sneaky", "sub/../../outside.png")):
        assert not got[name].valid
        assert got[name].reason == f"path outside dataset: image {path!r} is not a relative path inside {tmp_path / 'bb'}"


def test_rorem_and_editbench_paths_confined(tmp_path, outside):
    img, mask = image_array(RES, RES), asymmetric_mask(RES, RES) * 255
    write_rorem(tmp_path / "rr", {"a": (img, mask, img)})
    entries = json.loads((tmp_path / "rr" / "meta.json").read_text())
    entries.append({"source": "../outside.png", "mask": "mask/a.png", "GT": "GT/a.png"})
    entries.append({"source": "source/a.png", "mask": "mask/a.png", "GT": str(outside)})
    (tmp_path / "rr" / "meta.json").write_text(json.dumps(entries))
    reader = build_reader(DataConfig(kind="rorem", path=str(tmp_path / "rr"), resolution=RES), 0)
    assert reader[0].valid
    assert reader[1].reason.startswith("path outside dataset: source '../outside.png'")
    assert reader[2].reason.startswith(f"path outside dataset: GT {str(outside)!r}")

    row = {"prompt_full": "f", "prompt_mask-simple": "s", "prompt_mask-rich": "r"}
    write_editbench(tmp_path / "eb", {"natural": [{"aos": "a", **row}, {"aos": "../../outside", **row}]},
                    {("natural", "a"): img}, {("natural", "a"): mask})
    reader = build_reader(DataConfig(kind="editbench", path=str(tmp_path / "eb"), resolution=RES), 0)
    assert reader[0].valid
    assert reader[1].reason.startswith("path outside dataset: image 'references_natural/../../outside.png'")


# -- reasons are deterministic --------------------------------------------------------------------------------
def test_reasons_carry_no_memory_addresses(tmp_path):
    record = brushdata_record("bad", image_array(RES, RES))
    record["bad.png"] = b"this is not an image at all"
    tar = write_tar(tmp_path / "b.tar", [record])
    reasons = {build_reader(DataConfig(kind="brushdata", path=str(tar), resolution=RES), 0)[0].reason
               for _ in range(3)}
    (reason,) = reasons  # the same text every time
    assert reason == "corrupt image: image of bad: cannot identify image file <_io.BytesIO object>"
    assert one_line("x <PIL.Image.Image image mode=RGB size=1x1 at 0x7F3A2B1C0D90> y") == \
        "x <PIL.Image.Image image mode=RGB size=1x1> y"


# -- written files are readable like the rest ------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert umask_mode() == mode
        atomic_write_text(tmp_path / "report.json", "{}")
        run = Run(tmp_path / "run", None)
        run.write_task_record("sample", 3, "done", counts=1)
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what any other writer of the suite gives
    finally:
        os.umask(old)
    for path in (tmp_path / "report.json", run.task_record_path("sample", 3), plain):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp file left behind


def test_pairs_agreement_plot_is_readable(tmp_path):
    from fyp.pairs.report import save_heatmap

    old = os.umask(0o022)
    try:
        save_heatmap(tmp_path / "agreement.png", ["a", "b"], np.array([[1.0, 0.5], [0.5, 1.0]]), "t")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "agreement.png").stat().st_mode) == 0o644
