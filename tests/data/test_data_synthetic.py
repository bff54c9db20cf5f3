"""The procedural reader: deterministic, split-disjoint, prompts that describe the picture, masks over a shape."""
import numpy as np
import pytest

from fyp.config import DataConfig
from fyp.data import ReaderError, build_reader
from fyp.data.synthetic import COLOURS, SHAPES, SyntheticReader


def test_deterministic_from_seed_and_index():
    a, b = SyntheticReader(64, seed=3), SyntheticReader(64, seed=3)
    for i in (0, 5, 123):
        sa, sb = a[i], b[i]
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(sa.mask, sb.mask)
        assert (sa.prompt, sa.id) == (sb.prompt, sb.id)
    # Random access does not depend on what was read before.
    np.testing.assert_array_equal(SyntheticReader(64, seed=3)[123].image, a[123].image)
    other = SyntheticReader(64, seed=4)
    assert any(not np.array_equal(other[i].image, a[i].image) for i in range(4))


def test_splits_have_disjoint_ids_and_content():
    train, held = SyntheticReader(32, split="train"), SyntheticReader(32, split="heldout")
    train_ids = {train.item_id(i) for i in range(len(train))}
    held_ids = {held.item_id(i) for i in range(len(held))}
    assert not train_ids & held_ids and len(train_ids) == len(train) and len(held_ids) == len(held)
    assert not np.array_equal(train[0].image, held[0].image)
    with pytest.raises(ReaderError, match="train, heldout"):
        SyntheticReader(32, split="test")


@pytest.mark.parametrize("res", [32, 64, 128])
def test_samples_are_valid_and_described(res):
    reader = SyntheticReader(res)
    mask_shapes = set()
    for i in range(40):
        s = reader[i]
        assert s.valid and s.reason == ""
        assert s.image.shape == (res, res, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (res, res) and s.mask.dtype == np.uint8 and set(np.unique(s.mask)) <= {0, 1}
        frac = s.mask.mean()
        assert 0.02 < frac < 0.9, frac
        assert "gradient" in s.prompt and any(sh in s.prompt for sh in SHAPES)
        first_colour = s.prompt.split(" on ")[0].split(" and ")[0].split()[-2]
        assert first_colour in COLOURS
        # The hole covers pixels of the first shape's colour: the thing the prompt names is in the hole.
        colour = np.array(COLOURS[first_colour])
        is_colour = (np.abs(s.image.astype(int) - colour).sum(-1) == 0)
        assert is_colour[s.mask == 1].sum() > 0.5 * is_colour.sum()
        # A box hole is a filled rectangle; the others are not.
        ys, xs = np.nonzero(s.mask)
        box_area = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
        mask_shapes.add("box" if box_area == s.mask.sum() else "ellipse")
    assert mask_shapes == {"box", "ellipse"}


def test_build_reader_synthetic_and_unknown_kind():
    reader = build_reader(DataConfig(kind="synthetic", resolution=48, split="heldout"), seed=1)
    assert isinstance(reader, SyntheticReader) and reader.resolution == 48 and reader[0].id == "heldout-000000"
    with pytest.raises(ReaderError, match="unknown data.kind 'coco'; valid kinds: synthetic, brushdata, brushbench, editbench, rorem"):
        build_reader(DataConfig(kind="coco"), 0)
