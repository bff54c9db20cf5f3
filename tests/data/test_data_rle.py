"""RLE decode/encode: both orders, 1-based starts, and every malformed input."""
import numpy as np
import pytest

from fyp.data.rle import RLEError, rle_decode, rle_encode
from fixtures_data import asymmetric_mask


def test_known_small_example_row_and_column_major():
    # Pixels 2..3 and 6 (1-based) of a 2x3 image.
    rle = [2, 2, 6, 1]
    assert rle_decode(rle, (2, 3), order="C").tolist() == [[0, 1, 1], [0, 0, 1]]
    # Column-major walks down each column first: (0,0),(1,0),(0,1),(1,1),(0,2),(1,2).
    assert rle_decode(rle, (2, 3), order="F").tolist() == [[0, 1, 0], [1, 0, 1]]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (17, 17)])
def test_roundtrip(order, shape):
    mask = asymmetric_mask(*shape)
    rle = rle_encode(mask, order=order)
    assert rle[0] >= 1  # 1-based
    decoded = rle_decode(rle, shape, order=order)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask)
    other = "F" if order == "C" else "C"
    assert not np.array_equal(rle_decode(rle, shape, order=other), mask)


def test_zero_based_and_string_forms():
    mask = asymmetric_mask(16, 20)
    rle0 = rle_encode(mask, order="C", one_based=False)
    np.testing.assert_array_equal(rle_decode(rle0, (16, 20), order="C", one_based=False), mask)
    text = " ".join(str(v) for v in rle_encode(mask, order="F"))
    np.testing.assert_array_equal(rle_decode(text, (16, 20), order="F"), mask)


def test_empty_rle_is_an_empty_mask():
    assert rle_decode([], (4, 5), order="C").sum() == 0
    assert rle_encode(np.zeros((4, 5)), order="C") == []


@pytest.mark.parametrize("rle, message", [
    ([1, 2, 3], "odd number"),
    ([0, 2], "start below 1"),
    ([3, -1], "negative run length"),
    ([19, 5], "past the 4x5"),
    (["a", 1], "not an integer"),
    ([1.5, 2], "not an integer"),
    ([True, 2], "boolean"),
    ({"counts": [1, 2]}, "expected a list"),
])
def test_malformed(rle, message):
    with pytest.raises(RLEError, match=message):
        rle_decode(rle, (4, 5), order="C")
