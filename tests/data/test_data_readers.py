"""Real files on disk, read back: BrushData tars, BrushBench, EditBench, RORem."""
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from fyp.config import DataConfig
from fyp.data import ReaderError, build_reader
from fyp.data.brushdata import BrushDataReader
from fyp.data.rle import rle_decode, rle_encode
from fyp.data.transforms import fit_image, fit_mask
from fixtures_data import (asymmetric_mask, brushdata_record, image_array, write_brushbench,
                           write_editbench, write_rorem, write_tar)


# -- BrushData ------------------------------------------------------------------------------------
def test_brushdata_column_major_masks_and_random_access(tmp_path):
    png_img, jpg_img, wide_img = image_array(32, 32, 0), image_array(32, 32, 1), image_array(32, 48, 2)
    write_tar(tmp_path / "b" / "00000.tar", [
        brushdata_record("k0", png_img, caption="a cat on a sofa"),
        brushdata_record("sub/k1", jpg_img, caption="a dog", fmt="JPEG"),
    ])
    write_tar(tmp_path / "b" / "00001.tar", [brushdata_record("k2", wide_img, caption="a wide one")])
    reader = build_reader(DataConfig(kind="brushdata", path=str(tmp_path / "b"), resolution=32), seed=0)
    assert len(reader) == 3
    assert [reader.item_id(i) for i in range(3)] == ["00000/k0", "00000/sub/k1", "00001/k2"]

    # Random access: the last record first.
    wide = reader[2]
    assert wide.valid, wide.reason
    np.testing.assert_array_equal(wide.mask, fit_mask(asymmetric_mask(32, 48), 32))
    np.testing.assert_array_equal(wide.image, fit_image(Image.fromarray(wide_img), 32))

    first = reader[0]
    assert first.valid and first.prompt == "a cat on a sofa" and first.id == "00000/k0"
    np.testing.assert_array_equal(first.image, png_img)  # PNG at the resolution: exact
    np.testing.assert_array_equal(first.mask, asymmetric_mask(32, 32))
    # The same runs read row-major give a different mask: the order matters and is column-major here.
    rle = rle_encode(asymmetric_mask(32, 32), order="F")
    assert not np.array_equal(rle_decode(rle, (32, 32), order="C"), first.mask)

    jpeg = reader[1]
    assert jpeg.valid and jpeg.prompt == "a dog"
    assert np.abs(jpeg.image.astype(int) - jpg_img.astype(int)).mean() < 6  # lossy but close
    np.testing.assert_array_equal(jpeg.mask, asymmetric_mask(32, 32))


def test_brushdata_seeded_mask_choice_and_glob_and_braces(tmp_path):
    img = image_array(32, 32)
    masks = []
    for i in range(4):
        m = np.zeros((32, 32), np.uint8)
        m[4 + i : 10 + 2 * i, 3 : 9 + 3 * i] = 1
        masks.append(m)
    write_tar(tmp_path / "s-000.tar", [brushdata_record(f"r{j}", img, masks=masks) for j in range(6)])
    write_tar(tmp_path / "s-001.tar", [brushdata_record("z", img)])

    def chosen(seed, path):
        reader = BrushDataReader(path, 32, seed=seed)
        return [next(k for k, m in enumerate(masks) if np.array_equal(m, reader[j].mask)) for j in range(6)]

    picks = chosen(0, str(tmp_path / "s-000.tar"))
    assert picks == chosen(0, str(tmp_path / "s-*.tar"))[:6] == chosen(0, str(tmp_path / "s-{000..001}.tar"))[:6]
    assert len(set(picks)) > 1  # not always the first mask
    assert any(chosen(s, str(tmp_path / "s-000.tar")) != picks for s in (1, 2, 3))
    assert len(BrushDataReader(str(tmp_path / "s-{000..001}.tar"), 32)) == 7


def test_brushdata_index_cache(tmp_path):
    tar = write_tar(tmp_path / "c.tar", [brushdata_record("a", image_array(32, 32))])
    cache = tmp_path / "cache" / "index.npz"
    first = BrushDataReader(str(tar), 32, index_cache=cache)
    with np.load(cache) as saved:
        saved = dict(saved)
    assert saved["keys"].tolist() == [b"a"] and saved["offset"].shape == (1, 5) and (saved["offset"] >= 0).all()
    # A valid cache is used as is: change the key it records and see it come back.
    saved["keys"] = np.array([b"from-cache"])
    np.savez(cache, **saved)
    assert BrushDataReader(str(tar), 32, index_cache=cache).item_id(0) == "c/from-cache"
    # Changing the tar invalidates it; a damaged cache is rebuilt too.
    write_tar(tar, [brushdata_record("a", image_array(32, 32)), brushdata_record("b", image_array(32, 32))])
    again = BrushDataReader(str(tar), 32, index_cache=cache)
    assert len(again) == 2 and again.item_id(0) == "c/a"
    assert np.array_equal(first[0].mask, again[0].mask)
    cache.write_bytes(b"not an npz")
    assert len(BrushDataReader(str(tar), 32, index_cache=cache)) == 2


def test_brushdata_parallel_indexing_matches_serial(tmp_path):
    for t in range(3):
        write_tar(tmp_path / f"p{t}.tar", [brushdata_record(f"k{t}{j}", image_array(32, 32, j)) for j in range(2)])
    serial = BrushDataReader(str(tmp_path), 32, workers=1)
    parallel = BrushDataReader(str(tmp_path), 32, workers=2)
    assert [serial.item_id(i) for i in range(6)] == [parallel.item_id(i) for i in range(6)]
    np.testing.assert_array_equal(serial.index.offset, parallel.index.offset)
    np.testing.assert_array_equal(serial[5].image, parallel[5].image)


def test_brushdata_dataset_level_errors(tmp_path):
    with pytest.raises(ReaderError, match="needs data.path"):
        build_reader(DataConfig(kind="brushdata"), 0)
    with pytest.raises(ReaderError, match="does not exist"):
        BrushDataReader(str(tmp_path / "missing.tar"), 32)
    with tarfile.open(tmp_path / "z.tar", "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("x.caption"))
    with pytest.raises(ReaderError, match="not an uncompressed tar"):
        BrushDataReader(str(tmp_path / "z.tar"), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="no \\*.tar files"):
        BrushDataReader(str(tmp_path / "empty"), 32)


# -- BrushBench -----------------------------------------------------------------------------------
def brushbench_folder(tmp_path, size=(32, 32)):
    h, w = size  # square: item 0001 holds the transposed mask
    inner, outer = asymmetric_mask(h, w), 1 - asymmetric_mask(h, w)
    images = {"images/a.png": image_array(h, w, 0), "images/b.png": image_array(h, w, 1)}
    items = {
        "0002": {"image": "images/b.png", "caption": "second", "inpainting_mask": rle_encode(inner, order="C"),
                 "outpainting_mask": rle_encode(outer, order="C")},
        "0001": {"image": "images/a.png", "caption": "first", "inpainting_mask": rle_encode(inner.T, order="C"),
                 "outpainting_mask": rle_encode(outer, order="C")},
    }
    write_brushbench(tmp_path / "bb", items, images)
    return tmp_path / "bb", images, inner, outer


def test_brushbench_row_major_masks_in_file_order(tmp_path):
    folder, images, inner, outer = brushbench_folder(tmp_path)
    for path in (folder, folder / "mapping_file.json"):
        reader = build_reader(DataConfig(kind="brushbench", path=str(path), resolution=32), 0)
        assert [reader.item_id(i) for i in range(len(reader))] == ["0002", "0001"]
        s = reader[0]
        assert s.valid and s.prompt == "second" and s.id == "0002"
        np.testing.assert_array_equal(s.image, images["images/b.png"])
        np.testing.assert_array_equal(s.mask, inner)
        np.testing.assert_array_equal(reader[1].mask, inner.T)
        # Column-major decoding of the same runs would not give the mask we encoded.
        assert not np.array_equal(rle_decode(rle_encode(inner, order="C"), (32, 32), order="F"), inner)
    out = build_reader(DataConfig(kind="brushbench", path=str(folder), resolution=32, mask_kind="outpainting"), 0)
    np.testing.assert_array_equal(out[0].mask, outer)
    with pytest.raises(ReaderError, match="inpainting, outpainting"):
        build_reader(DataConfig(kind="brushbench", path=str(folder), mask_kind="inside"), 0)


def test_brushbench_resizes_to_the_resolution(tmp_path):
    folder, images, inner, _ = brushbench_folder(tmp_path, size=(64, 64))
    s = build_reader(DataConfig(kind="brushbench", path=str(folder), resolution=32), 0)[0]
    assert s.image.shape == (32, 32, 3)
    np.testing.assert_array_equal(s.mask, fit_mask(inner, 32))
    np.testing.assert_array_equal(s.image, fit_image(Image.fromarray(images["images/b.png"]), 32))


# -- EditBench ------------------------------------------------------------------------------------
def editbench_folder(tmp_path):
    rows = {
        "natural": [{"aos": "n1", "prompt_full": "full n1", "prompt_mask-simple": "simple n1",
                     "prompt_mask-rich": "rich n1", "category": "x"}],
        "generated": [{"aos": "g1", "prompt_full": "full g1", "prompt_mask-simple": "simple g1",
                       "prompt_mask-rich": "rich g1", "category": "y"}],
    }
    m = asymmetric_mask(64, 48) * 255
    images = {("natural", "n1"): image_array(64, 48, 0), ("generated", "g1"): image_array(64, 48, 1)}
    masks = {("natural", "n1"): m, ("generated", "g1"): m[:, ::-1].copy()}
    return write_editbench(tmp_path / "eb", rows, images, masks), images, masks


@pytest.mark.parametrize("kind, expected", [("mask-simple", "simple"), ("mask-rich", "rich"), ("full", "full")])
def test_editbench_three_prompt_kinds(tmp_path, kind, expected):
    folder, images, masks = editbench_folder(tmp_path)
    reader = build_reader(DataConfig(kind="editbench", path=str(folder), resolution=32, prompt_kind=kind), 0)
    assert len(reader) == 2
    natural, generated = reader[0], reader[1]
    assert (natural.id, generated.id) == ("natural-n1", "generated-g1")
    assert (natural.prompt, generated.prompt) == (f"{expected} n1", f"{expected} g1")
    np.testing.assert_array_equal(natural.mask, fit_mask(masks[("natural", "n1")] > 127, 32))
    np.testing.assert_array_equal(generated.mask, fit_mask(masks[("generated", "g1")] > 127, 32))
    np.testing.assert_array_equal(natural.image, fit_image(Image.fromarray(images[("natural", "n1")]), 32))


def test_editbench_errors(tmp_path):
    with pytest.raises(ReaderError, match="mask-simple, mask-rich, full"):
        build_reader(DataConfig(kind="editbench", path=str(tmp_path), prompt_kind="short"), 0)
    with pytest.raises(ReaderError, match="no annotations_natural.csv"):
        build_reader(DataConfig(kind="editbench", path=str(tmp_path)), 0)


# -- RORem ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("meta", [True, False])
def test_rorem_source_mask_gt(tmp_path, meta):
    source, target = image_array(48, 32, 0), image_array(48, 32, 5)
    mask = asymmetric_mask(48, 32) * 255
    folder = write_rorem(tmp_path / "rr", {"x01": (source, mask, target), "x02": (target, mask, source)}, meta=meta)
    reader = build_reader(DataConfig(kind="rorem", path=str(folder), resolution=32), 0)
    assert len(reader) == 2
    s = reader[0]
    assert s.valid and s.prompt == "" and s.id == "x01"
    np.testing.assert_array_equal(s.image, fit_image(Image.fromarray(source), 32))
    np.testing.assert_array_equal(s.target, fit_image(Image.fromarray(target), 32))
    np.testing.assert_array_equal(s.mask, fit_mask(mask > 127, 32))
    assert reader[1].id == "x02"


def test_rorem_errors(tmp_path):
    with pytest.raises(ReaderError, match="neither meta.json nor a source/"):
        build_reader(DataConfig(kind="rorem", path=str(tmp_path)), 0)
    with pytest.raises(ReaderError, match="is not a folder"):
        build_reader(DataConfig(kind="rorem", path=str(tmp_path / "nope")), 0)


def test_brushdata_stops_indexing_once_it_has_enough(tmp_path):
    for t in range(4):
        write_tar(tmp_path / f"e{t}.tar", [brushdata_record(f"k{t}{j}", image_array(32, 32, j)) for j in range(3)])
    full = BrushDataReader(str(tmp_path), 32, workers=1)
    part = BrushDataReader(str(tmp_path), 32, workers=1, enough=4)
    assert len(full) == 12 and len(part) == 6 and not part.index.complete  # two tars hold 6 >= 4
    assert [part.item_id(i) for i in range(6)] == [full.item_id(i) for i in range(6)]
    np.testing.assert_array_equal(part[5].image, full[5].image)
    # A cache of a partial index serves runs that need no more, and is rebuilt for ones that do.
    cache = tmp_path / "cache.npz"
    assert len(BrushDataReader(str(tmp_path), 32, index_cache=cache, workers=1, enough=4)) == 6
    assert len(BrushDataReader(str(tmp_path), 32, index_cache=cache, workers=1, enough=5)) == 6
    assert len(BrushDataReader(str(tmp_path), 32, index_cache=cache, workers=1, enough=7)) == 9
    assert len(BrushDataReader(str(tmp_path), 32, index_cache=cache, workers=1)) == 12
    assert len(BrushDataReader(str(tmp_path), 32, index_cache=cache, workers=1, enough=2)) == 12  # complete serves all


@pytest.mark.parametrize("fmt, fast_path", [(tarfile.USTAR_FORMAT, True), (tarfile.GNU_FORMAT, False),
                                             (tarfile.PAX_FORMAT, False)])
def test_brushdata_fast_header_scan_agrees_with_tarfile(tmp_path, fmt, fast_path):
    from fyp.data.brushdata import _NeedsTarfile, _scan_headers, _tarfile_headers

    long_dir = "d" * 60 + "/" + "e" * 60  # > 100 characters: ustar prefix field, GNU or pax long names
    names = {"plain.caption": b"x", f"{long_dir}/k.caption": b"yy", "\u00e9t\u00e9.caption": b"zzz",
             "empty.caption": b""}
    path = tmp_path / "f.tar"
    with tarfile.open(path, "w", format=fmt) as archive:
        folder = tarfile.TarInfo("adir")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in names.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    expected, fast = [], []
    _tarfile_headers(path, lambda *a: expected.append(a))
    assert [e[0] for e in expected] == list(names)
    if fast_path:  # plain ustar (long paths through the prefix field): the fast scan reads it all
        _scan_headers(path, lambda *a: fast.append(a))
        assert fast == expected
    else:  # GNU long names / pax records: the fast scan declines and tarfile takes over
        with pytest.raises(_NeedsTarfile):
            _scan_headers(path, lambda *a: fast.append(a))
    # Either way the reader's index holds every record with the right offsets.
    from fyp.data.brushdata import index_tar

    indexed = dict(index_tar(path))
    assert {k: v["caption"] for k, v in indexed.items()} == {n.rsplit(".", 1)[0]: (o, s) for n, o, s in expected}
