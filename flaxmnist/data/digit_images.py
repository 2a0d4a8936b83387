"""Your own images as MNIST sees them: grey, white digit on black, fitted in 20x20, centred by mass.

The MNIST files were made this way (LeCun et al.): each digit was size-normalised to fit a 20x20
box, keeping its aspect ratio, and placed in a 28x28 image so that its centre of mass is at the
centre. :func:`to_mnist` does the same to any picture of one digit, so that a model trained on
MNIST reads it as it reads the test set:

1. grey levels (RGB weighted as ITU-R 601-2, alpha composited on white);
2. inverted when the background is light (the border is brighter than the middle of the range);
3. cropped to the pixels brighter than a tenth of the maximum;
4. resized (antialiased) so that the longer side is 20 pixels;
5. pasted into 28x28 with its centre of mass at pixel (14, 14), as in the MNIST files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from flaxmnist.errors import DataError

MNIST_SIZE = 28
BOX_SIZE = 20
# The largest image read, in pixels: a photo is ~12 MP; anything far above is no digit. It lies
# below Pillow's own decompression-bomb bound (Image.MAX_IMAGE_PIXELS, ~89 MP by default), so
# every image Pillow would warn about is refused here first, in one line.
MAX_PIXELS = 50_000_000
# The only formats Pillow opens here: plain raster formats of photos and scans. Other formats it
# knows are refused unread (EPS runs Ghostscript; many are rarely used and little tested).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ACCEPTED = "PNG, JPEG, BMP, GIF, TIFF or WebP"


def read_image(path: str | Path) -> np.ndarray:
    """A PNG / JPEG / BMP / GIF / TIFF / WebP file or a ``.npy`` array as uint8 grey levels.

    Only the file's header is read before its size and type are checked: an image of more than
    :data:`MAX_PIXELS` pixels is refused before it is decoded, a ``.npy`` file before its data is
    read.

    Args:
      path: an image file in one of :data:`IMAGE_FORMATS`, or a ``.npy`` file of shape
        ``[H, W]`` or ``[H, W, 1]`` (integers 0-255, or floats in [0, 1]).

    Returns:
      The grey levels ``[H, W]``, 0 (black) to 255 (white), as the file has them (not yet
      inverted).

    Raises:
      DataError: for a missing or empty file, one that is no image of an accepted format or
        dtype, or an absurd size.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if path.suffix.lower() == ".npy":
        return _read_array(path)
    with _open_image(path) as image:
        _check_pixels(path, image.width, image.height)
        try:
            return np.asarray(_grey(image))
        except OSError as e:
            raise DataError(f"{path}: not an image Pillow can read ({type(e).__name__})") from None


def _open_image(path: Path) -> Image.Image:
    """``path`` opened (its header read, nothing decoded) if it is in one of the formats."""
    try:
        with warnings.catch_warnings():
            # Pillow warns of any image above its bound; _check_pixels refuses each of them.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise DataError(f"{path}: too large for a digit (at most {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a {ACCEPTED} image") from None
    except OSError as e:
        raise DataError(f"{path}: not an image Pillow can read ({type(e).__name__})") from None


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuses an image of more than :data:`MAX_PIXELS` pixels."""
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{path}: {width}x{height} pixels is too large for a digit "
            f"(at most {MAX_PIXELS:,} pixels)"
        )


def _grey(image: Image.Image) -> Image.Image:
    """``image`` in grey levels; transparent pixels become white paper."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image)
    return image.convert("L")


def _read_array(path: Path) -> np.ndarray:
    """A ``.npy`` image as uint8; its header is checked before its data is read."""
    try:
        with path.open("rb") as f:
            _check_array_header(path, f)
            f.seek(0)
            array = np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a numpy array file ({e})") from None
    if array.ndim == 3:
        array = array[..., 0]
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise DataError(f"{path}: the array holds NaN or infinite values")
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0)
    return array.astype(np.uint8)


def _check_array_header(path: Path, f: BinaryIO) -> None:
    """Reads the ``.npy`` header from ``f`` and refuses anything but a grey image of sane size.

    Raises:
      ValueError: for a file that is no ``.npy`` file of format version 1.0 or 2.0 (every
        numeric array ``np.save`` writes is one).
      DataError: for a shape or dtype of no grey image, a size above :data:`MAX_PIXELS`, or
        fewer bytes than the header announces.
    """
    version = np.lib.format.read_magic(f)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise ValueError(f"format version {version[0]}.{version[1]} is not read here")
    shape, _, dtype = readers[version](f)
    image = shape[:2] if len(shape) == 3 and shape[2] == 1 else shape
    if len(image) != 2 or min(image) == 0:
        raise DataError(f"{path}: expected one image [H, W] or [H, W, 1], got shape {shape}")
    if image[0] * image[1] > MAX_PIXELS:
        raise DataError(f"{path}: {shape} is too large for a digit (at most {MAX_PIXELS:,} pixels)")
    if not np.issubdtype(dtype, np.integer) and not np.issubdtype(dtype, np.floating):
        raise DataError(f"{path}: expected uint8 or float grey levels, got {dtype}")
    needed, held = image[0] * image[1] * dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell()
    if held < needed:
        raise DataError(f"{path}: holds {held:,} of the {needed:,} bytes its header announces")


def to_mnist(grey: np.ndarray, *, box: int = BOX_SIZE, centre_by_mass: bool = True) -> np.ndarray:
    """One digit's grey levels ``[H, W]`` as an MNIST image: uint8 ``[28, 28, 1]``.

    Args:
      grey: uint8 grey levels, dark digit on light paper or light digit on dark.
      box: the longer side of the fitted object (20 for MNIST digits; 28 for Fashion-MNIST,
        whose pictures fill the frame).
      centre_by_mass: centre the object by its centre of mass (MNIST) or by its bounding box.

    Returns:
      A white object on black, fitted in ``box`` x ``box`` and centred, as in the MNIST files.
      A blank image (nothing but background) comes back all black.
    """
    ink = _as_ink(np.asarray(grey, np.float32))
    rows, cols = np.nonzero(ink > 0.1 * ink.max()) if ink.max() > 0 else ((), ())
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
    if len(rows) == 0:
        return out.astype(np.uint8)[..., None]
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    digit = _fit_in_box(digit, box)
    top, left = _placement(digit) if centre_by_mass else _centred(digit)
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.clip(np.round(out), 0, 255).astype(np.uint8)[..., None]


def _as_ink(grey: np.ndarray) -> np.ndarray:
    """Ink as bright values on a zero background (inverted when the paper is light)."""
    paper = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if paper > 127.5:  # dark digit on light paper, as people write
        grey, paper = 255.0 - grey, 255.0 - paper
    return np.clip(grey - paper, 0.0, 255.0)


def _fit_in_box(digit: np.ndarray, box: int) -> np.ndarray:
    """``digit`` resized (antialiased) so that its longer side is ``box`` pixels."""
    scale = box / max(digit.shape)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    resized = Image.fromarray(digit.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS
    )
    return np.clip(np.asarray(resized), 0, 255)


def _placement(digit: np.ndarray) -> tuple[int, int]:
    """Top-left corner that puts ``digit``'s centre of mass at the image centre (kept inside)."""
    total = digit.sum()
    rows, cols = np.indices(digit.shape)
    centre = (
        ((rows * digit).sum() / total, (cols * digit).sum() / total)
        if total > 0
        else ((digit.shape[0] - 1) / 2, (digit.shape[1] - 1) / 2)
    )
    corner = []
    for axis in (0, 1):
        start = round(MNIST_SIZE / 2 - centre[axis])
        corner.append(int(np.clip(start, 0, MNIST_SIZE - digit.shape[axis])))
    return corner[0], corner[1]


def _centred(digit: np.ndarray) -> tuple[int, int]:
    """Top-left corner that centres ``digit``'s bounding box in the image."""
    return (MNIST_SIZE - digit.shape[0]) // 2, (MNIST_SIZE - digit.shape[1]) // 2


# How each dataset's images were made: the object's fitted size, and how it was centred.
DATASET_FRAMING = {"mnist": (BOX_SIZE, True), "fashion_mnist": (MNIST_SIZE, False)}


def load_image_as(path: str | Path, dataset: str) -> np.ndarray:
    """A file of one object as an image of ``dataset`` (``mnist`` or ``fashion_mnist``).

    Args:
      path: an image file or ``.npy`` array (see :func:`read_image`).
      dataset: the dataset the model was trained on; its framing is reproduced.

    Returns:
      uint8 ``[28, 28, 1]``.

    Raises:
      DataError: for an unreadable file or a dataset whose framing is not known.
    """
    if dataset not in DATASET_FRAMING:
        raise DataError(
            f"predicting on image files needs an MNIST or Fashion-MNIST model, not {dataset!r}"
        )
    box, by_mass = DATASET_FRAMING[dataset]
    return to_mnist(read_image(path), box=box, centre_by_mass=by_mass)
