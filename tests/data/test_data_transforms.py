"""The one resize/crop rule, mask resampling, and the mask checks."""
import numpy as np
import pytest
from PIL import Image

from fyp.data.sample import BadSample
from fyp.data.transforms import decode_image, decode_mask_image, fit_box, fit_image, fit_mask, fit_pair
from fixtures_data import encode, image_array, write_png


@pytest.mark.parametrize("size, res, resized, box", [
    ((100, 50), 32, (64, 32), (16, 0, 48, 32)),  # landscape: shorter side (height) -> R, centre crop in x
    ((50, 100), 32, (32, 64), (0, 16, 32, 48)),  # portrait
    ((64, 64), 32, (32, 32), (0, 0, 32, 32)),
    ((33, 31), 16, (17, 16), (0, 0, 16, 16)),  # odd: 33 * 16/31 = 17.03 -> 17, crop offset floor(1/2) = 0
    ((20, 20), 64, (64, 64), (0, 0, 64, 64)),  # upscaling
])
def test_fit_box(size, res, resized, box):
    assert fit_box(*size, res) == (resized, box)


def test_fit_image_matches_pil_resize_then_centre_crop():
    array = image_array(50, 100)
    out = fit_image(Image.fromarray(array), 32)
    expected = np.asarray(Image.fromarray(array).resize((64, 32), Image.Resampling.BICUBIC).crop((16, 0, 48, 32)))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_same_size_passes_through_untouched():
    array = image_array(32, 32)
    np.testing.assert_array_equal(fit_image(Image.fromarray(array), 32), array)
    mask = (np.arange(32 * 32).reshape(32, 32) % 7 == 0).astype(np.uint8)
    np.testing.assert_array_equal(fit_mask(mask, 32), mask)


def test_fit_mask_is_nearest_and_binary():
    mask = np.zeros((50, 100), np.uint8)
    mask[10:30, 40:61] = 1
    out = fit_mask(mask, 32)
    assert set(np.unique(out)) <= {0, 1} and out.dtype == np.uint8
    # 2x downscale of x (100 -> 64 is 0.64) is not exact; check against PIL nearest on the 0/255 mask.
    ref = np.asarray(Image.fromarray(mask * 255).resize((64, 32), Image.Resampling.NEAREST).crop((16, 0, 48, 32))) > 0
    np.testing.assert_array_equal(out, ref.astype(np.uint8))
    # Exact 2x downscale: the hole scales with it.
    square = np.zeros((64, 64), np.uint8)
    square[8:24, 16:48] = 1
    assert fit_mask(square, 32).sum() == 8 * 16


def test_fit_pair_rejects_wrong_size_empty_and_full():
    image = Image.fromarray(image_array(40, 48))
    with pytest.raises(BadSample, match="mask size mismatch: mask is 40x40 .* image is 40x48"):
        fit_pair(image, np.ones((40, 40), np.uint8), 32)
    with pytest.raises(BadSample, match="empty mask"):
        fit_pair(image, np.zeros((40, 48), np.uint8), 32)
    with pytest.raises(BadSample, match="full mask"):
        fit_pair(image, np.ones((40, 48), np.uint8), 32)
    # A hole entirely outside the centre crop is empty *after* the crop.
    mask = np.zeros((32, 96), np.uint8)
    mask[:, :10] = 1
    with pytest.raises(BadSample, match="empty mask: no hole pixels after resize/crop"):
        fit_pair(Image.fromarray(image_array(32, 96)), mask, 32)


def test_decode_image_errors(tmp_path):
    png = encode(image_array(16, 16))
    assert decode_image(png).size == (16, 16)
    with pytest.raises(BadSample, match="corrupt image"):
        decode_image(b"not an image at all")
    with pytest.raises(BadSample, match="corrupt image"):
        decode_image(png[: len(png) // 2])
    with pytest.raises(BadSample, match="missing file"):
        decode_image(path=tmp_path / "nope.png")
    grey = encode(np.full((8, 8), 200, np.uint8))
    assert decode_image(grey).mode == "RGB"


def test_decode_mask_image_thresholds_and_drops_alpha(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255
    mask[0, 0] = 100  # below the threshold: keep
    out = decode_mask_image(write_png(tmp_path / "m.png", mask))
    assert out.sum() == 9 and out[0, 0] == 0
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1:3, 1:3, :3] = 255
    assert decode_mask_image(write_png(tmp_path / "rgba.png", rgba)).sum() == 4
    zero_one = (mask > 127).astype(np.uint8)  # stored as 0/1 rather than 0/255
    np.testing.assert_array_equal(decode_mask_image(write_png(tmp_path / "01.png", zero_one)), zero_one)
