"""The MNIST framing of your own pictures: lighting, polarity, specks, stroke width, MNIST input."""

from pathlib import Path

import chex
import numpy as np
import pytest
from helpers import load_experiment
from PIL import Image, ImageDraw
from scipy import ndimage

from flaxmnist.evaluation import digit_images

SIZE = 240


def _four(width: int = 18) -> np.ndarray:
    """A dark "4" drawn with strokes ``width`` pixels wide on a white 240x240 page (float)."""
    page = Image.new("L", (SIZE, SIZE), 255)
    draw = ImageDraw.Draw(page)
    draw.line([(150, 40), (60, 150), (180, 150)], fill=0, width=width, joint="curve")
    draw.line([(150, 40), (150, 210)], fill=0, width=width)
    return np.asarray(page, np.float32)


def _uint8(grey: np.ndarray) -> np.ndarray:
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def _ink(grey: np.ndarray) -> np.ndarray:
    """The framed image's ink (above half white) as a boolean 28x28 mask."""
    return digit_images.to_mnist(_uint8(grey))[..., 0] > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _box_and_centre(image: np.ndarray) -> tuple[tuple[int, int], tuple[float, float]]:
    """The bounding box (height, width) of the non-zero pixels and the centre of mass."""
    rows, cols = np.nonzero(image)
    box = (int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1)
    return box, ndimage.center_of_mass(image.astype(np.float64))


def test_contrast_is_the_fraction_of_light_the_ink_absorbs_whatever_the_lighting():
    # The paper's brightness runs from 120 to 220 across the page; the ink absorbs 80 % of it.
    paper = np.tile(np.linspace(120.0, 220.0, SIZE, dtype=np.float32), (SIZE, 1))
    page = paper.copy()
    page[100:140, 60:200] *= 0.2
    contrast, noise = digit_images.ink_contrast(page)
    np.testing.assert_allclose(contrast[100:140, 60:200], 0.8, atol=0.005)
    assert np.abs(np.delete(contrast, np.s_[100:140], axis=0)).max() < 0.01
    assert noise < 0.01


def test_a_digit_under_a_strong_lighting_gradient_and_noise_frames_as_the_clean_one():
    rows, cols = np.indices((SIZE, SIZE)) / (SIZE - 1)
    light = 1.0 - 0.55 * (0.6 * cols + 0.4 * rows)  # 100 % down to 45 % across the page
    noise = np.random.default_rng(0).normal(0.0, 8.0, (SIZE, SIZE))
    clean, lit = _ink(_four()), _ink(_four() * light + noise)
    assert _iou(clean, lit) > 0.95


def test_dark_ink_on_light_paper_and_light_ink_on_dark_frame_alike():
    rng = np.random.default_rng(1)
    page = _uint8(_four() + rng.normal(0.0, 6.0, (SIZE, SIZE)))
    chex.assert_trees_all_equal(digit_images.to_mnist(page), digit_images.to_mnist(255 - page))


def test_an_isolated_speck_far_from_the_digit_changes_nothing():
    page = _four()
    specked = page.copy()
    specked[225:229, 5:9] = 0.0  # a 4x4 blot in the bottom-left corner
    chex.assert_trees_all_equal(
        digit_images.to_mnist(_uint8(specked)), digit_images.to_mnist(_uint8(page))
    )


def test_stroke_width_of_a_long_band_is_its_width():
    for width in (2, 4, 6):
        band = np.zeros((20, 1000), bool)
        band[5 : 5 + width, :] = True  # depths 1, 2, ..., 2, 1 across it, but near its ends
        assert digit_images.stroke_width(band) == pytest.approx(width, rel=0.01)


@pytest.mark.parametrize("pen", [2, 18, 40])
def test_framed_strokes_are_as_wide_as_mnists(pen):
    # MNIST's strokes, binarised at half white in the 28x28 images, are 2.1-3.7 pixels wide
    # (10th-90th percentile over the training digits); a hairline is widened into that range, a
    # marker thinned (within 0.1 pixel: the framing measures them on its finer binarised ink).
    assert 2.0 <= digit_images.stroke_width(_ink(_four(width=pen))) <= 3.8


def test_a_filled_blob_is_not_thinned_as_strokes_would_be():
    page = np.full((SIZE, SIZE), 255.0, np.float32)
    rows, cols = np.indices((SIZE, SIZE))
    page[((rows - 120) / 100) ** 2 + ((cols - 120) / 50) ** 2 <= 1] = 0.0  # 200 x 100 ellipse
    (height, width), _ = _box_and_centre(_ink(page))
    assert (height, width) == (20, 10)


def test_an_mnist_like_image_comes_back_essentially_unchanged():
    # Made as MNIST was: the digit drawn finely, area-averaged into a 20-pixel box, in 28x28.
    ink = 255.0 - _four()
    rows, cols = np.nonzero(ink)
    fine = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    width = round(20 * fine.shape[1] / fine.shape[0])
    digit = np.asarray(Image.fromarray(fine, mode="F").resize((width, 20), Image.Resampling.BOX))
    mnist = np.zeros((28, 28), np.float32)
    mnist[4:24, 6 : 6 + width] = digit
    framed = digit_images.to_mnist(_uint8(mnist))[..., 0]
    (height, framed_width), centre = _box_and_centre(framed)
    assert height == 20 and abs(framed_width - width) <= 1
    assert centre == pytest.approx((14.0, 14.0), abs=0.5)
    best = max(
        _iou(np.roll(framed > 127, (dr, dc), (0, 1)), mnist > 127)
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    )
    assert best > 0.9


@pytest.mark.slow
def test_photo_like_renders_are_framed_in_the_20_pixel_box_centred_by_mass(tmp_path):
    script = load_experiment("predict_external")
    fonts = script.digit_fonts(Path("/usr/share/fonts"))
    if len(fonts) < 2:
        pytest.skip("needs two fonts that draw digits")
    jobs = script.photo_jobs(script.split_fonts(fonts)["dev"], 20, "dev")
    for i, (font, digit) in enumerate(jobs):
        rng = np.random.default_rng([script.SEED, 1, 0, i])
        path = tmp_path / f"{i}.jpg"
        script.photo_of(font, digit, rng).save(path, quality=75)
        framed = digit_images.load_image_as(path, "mnist")[..., 0]
        (height, width), centre = _box_and_centre(framed)
        assert max(height, width) == 20, (font.name, digit)
        assert centre == pytest.approx((14.0, 14.0), abs=0.5), (font.name, digit)
        labels, count = ndimage.label(framed > 0, structure=np.ones((3, 3)))
        masses = ndimage.sum(framed, labels, range(1, count + 1))
        assert masses.max() >= 0.95 * masses.sum(), (font.name, digit)  # no speck kept
