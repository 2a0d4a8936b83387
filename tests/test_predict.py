"""Predicting your own image files: MNIST framing by hand-computed geometry, files, the CLI."""

import json

import numpy as np
import pytest
from helpers import run_module
from PIL import Image

from flaxmnist.errors import DataError
from flaxmnist.evaluation import digit_images


def _ellipse(height: int, width: int, size: tuple[int, int], centre: tuple[float, float]):
    rows, cols = np.indices(size)
    inside = ((rows - centre[0]) / (height / 2)) ** 2 + ((cols - centre[1]) / (width / 2)) ** 2
    return np.where(inside <= 1.0, 255, 0).astype(np.uint8)


def _bbox_and_centre(image: np.ndarray):
    rows, cols = np.nonzero(image > 25)
    total = image.sum()
    r, c = np.indices(image.shape)
    centre = ((r * image).sum() / total, (c * image).sum() / total)
    return (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1), centre


def test_a_dark_digit_on_light_paper_is_inverted_fitted_in_20_and_centred_by_mass():
    # A 100 x 50 dark ellipse near a corner of a 300 x 400 white page.
    page = 255 - _ellipse(100, 50, (300, 400), (80.0, 60.0))
    out = digit_images.to_mnist(page)
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    image = out[..., 0]
    assert image[0, 0] == 0 and image.max() == 255  # white on black now
    (height, width), centre = _bbox_and_centre(image)
    assert height == 20 and width in (10, 11)  # the longer side is 20; the aspect kept
    assert centre == pytest.approx((14.0, 14.0), abs=0.5)


def test_an_image_already_framed_as_mnist_comes_back_the_same_up_to_half_a_pixel():
    framed = digit_images.to_mnist(255 - _ellipse(100, 50, (300, 400), (80.0, 60.0)))[..., 0]
    again = digit_images.to_mnist(framed)[..., 0]
    assert _bbox_and_centre(again)[0] == _bbox_and_centre(framed)[0]
    assert _bbox_and_centre(again)[1] == pytest.approx((14.0, 14.0), abs=0.5)
    # An even-sized object's centre of mass lies between pixels: it may move by one.
    best = max(
        np.corrcoef(np.roll(again, (dr, dc), (0, 1)).ravel(), framed.ravel())[0, 1]
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    )
    assert best > 0.99


def test_fashion_framing_fills_the_frame_centred_by_its_box():
    page = 255 - _ellipse(60, 120, (200, 200), (50.0, 90.0))
    image = digit_images.to_mnist(page, box=28, centre_by_mass=False)[..., 0]
    (height, width), _ = _bbox_and_centre(image)
    assert width == 28 and height in (14, 15)


def test_a_blank_page_is_an_all_black_image():
    assert not digit_images.to_mnist(np.full((50, 50), 255, np.uint8)).any()


def test_transparent_png_paper_reads_as_white_and_npy_floats_as_grey_levels(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 18:22] = (0, 0, 0, 255)  # a black stroke; the rest is transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "stroke.png")
    grey = digit_images.read_image(tmp_path / "stroke.png")
    assert grey[0, 0] == 255 and grey[20, 20] == 0
    np.save(tmp_path / "half.npy", np.full((28, 28, 1), 0.5, np.float32))
    assert digit_images.read_image(tmp_path / "half.npy").tolist() == [[128] * 28] * 28


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.png", None, "no such file"),
        ("empty.png", b"", "the file is empty"),
        ("text.png", b"not an image at all", "not a PNG, JPEG, BMP, GIF, TIFF or WebP image"),
        ("cube.npy", np.zeros((4, 4, 4)), "expected one image"),
        ("nan.npy", np.full((28, 28), np.nan), "NaN or infinite"),
        ("pickle.npy", b"\x93NUMPY garbage", "not a numpy array file"),
    ],
)
def test_bad_files_are_one_line_data_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(DataError, match=message):
        digit_images.read_image(path)


def test_an_absurdly_large_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    Image.new("L", (300, 200), 255).save(tmp_path / "big.png")
    monkeypatch.setattr(digit_images, "MAX_PIXELS", 50_000)
    with pytest.raises(DataError, match="300x200 pixels is too large"):
        digit_images.read_image(tmp_path / "big.png")


def test_only_mnist_and_fashion_models_take_image_files(tmp_path):
    Image.new("L", (28, 28), 0).save(tmp_path / "x.png")
    with pytest.raises(DataError, match="not 'cifar10'"):
        digit_images.load_image_as(tmp_path / "x.png", "cifar10")


@pytest.mark.slow
def test_cli_prints_ranked_classes_and_json_and_fails_in_one_line(tiny_config, tmp_path):
    from flaxmnist.training import loop

    tiny_config.num_epochs = 1
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    Image.fromarray(255 - _ellipse(60, 30, (100, 100), (50.0, 50.0))).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", _ellipse(20, 10, (28, 28), (14.0, 14.0)))
    run = f"--workdir={tmp_path / 'run'}"
    result = run_module("predict", run, "a.png", "b.npy", "--json", "--top=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["file"] for r in records] == ["a.png", "b.npy"]
    for record in records:
        probabilities = [entry["probability"] for entry in record["top"]]
        assert len(probabilities) == 2 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    lines = run_module("predict", run, "a.png", cwd=tmp_path).stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("a.png: ") and lines[0].count(" %") == 3
    for args, message in [
        (["empty.png"], "empty.png: no such file"),
        ([], "name at least one image file"),
        (["a.png", "--top=0"], "top must be between 1 and 10"),
        (["a.png", "--top=x"], "--top: expected an integer"),
    ]:
        failed = run_module("predict", run, *args, cwd=tmp_path)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last
