"""Your own images as MNIST sees them: grey, white digit on black, fitted in 20x20, centred by mass.

The MNIST files were made this way (LeCun et al.): each digit, binary ink at a finer resolution,
was size-normalised to fit a 20x20 box keeping its aspect ratio (antialiased, hence the grey
levels), and placed in a 28x28 image so that its centre of mass is at the centre. :func:`to_mnist`
does the same to any picture of one digit, a scan or a phone photo, so that a model trained on
MNIST reads it as it reads the test set:

1. grey levels (RGB weighted as ITU-R 601-2, alpha composited on white), at most 512 pixels a side;
2. the paper's level fitted as a smooth (quadratic) surface that the ink drops out of, so that
   uneven lighting drops out of the picture;
3. the ink's side (darker or lighter than the paper) and its contrast from the paper, 0 to 1;
4. binarised at half the ink's contrast, above the paper's noise; specks are dropped and the
   rest is cropped to its bounding box, at four times its final size or finer;
5. strokes dilated or eroded to the width of MNIST's;
6. area-averaged (antialiased) so that the longer side is 20 pixels;
7. pasted into 28x28 with its centre of mass at pixel (14, 14), as in the MNIST files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

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

# Framing (to_mnist). The picture is area-averaged to at most WORK_SIDE pixels on a side (a digit
# filling a fifth of a phone photo keeps ~50 pixels); the paper is fitted to a copy of at most
# FIT_SIDE pixels, in FIT_ROUNDS rounds, each over the pixels within FIT_SIGMAS spreads.
WORK_SIDE = 512
FIT_SIDE = 64
FIT_ROUNDS = 5
FIT_SIGMAS = 3.0
# Ink stands NOISE_SIGMAS noise levels (and MIN_CONTRAST) above the paper; its contrast is the
# INK_PERCENTILE percentile of the pixels that do.
NOISE_SIGMAS = 4.0
MIN_CONTRAST = 0.02
INK_PERCENTILE = 90
SPECK = 0.1  # connected parts smaller than this fraction of the largest are dropped
NEAR = 2.0  # pixels around the kept ink whose contrast is kept (its strokes' soft edges)
FINE = 4  # a digit is binarised at FINE times its size in the 28x28 image, or finer
# The stroke widths of the MNIST training digits, in pixels of the 28x28 images: the 10th and 90th
# percentiles (stroke_width of their ink, binarised as to_mnist binarises it).
STROKE_WIDTHS = (1.8, 3.6)
BLOB = 3.0  # ink whose area is less than BLOB times its width squared is a blob, not strokes


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


def to_mnist(
    grey: np.ndarray, *, box: int = BOX_SIZE, centre_by_mass: bool = True, strokes: bool = True
) -> np.ndarray:
    """One digit's grey levels ``[H, W]`` as an MNIST image: uint8 ``[28, 28, 1]``.

    Args:
      grey: uint8 grey levels, dark digit on light paper or light digit on dark.
      box: the longer side of the fitted object (20 for MNIST digits; 28 for Fashion-MNIST,
        whose pictures fill the frame).
      centre_by_mass: centre the object by its centre of mass (MNIST) or by its bounding box.
      strokes: draw the object as ink strokes at least as wide as MNIST's (digits), or keep its
        grey levels (Fashion-MNIST's pictures).

    Returns:
      A white object on black, fitted in ``box`` x ``box`` and centred, as in the MNIST files.
      A blank image (nothing but background) comes back all black.
    """
    contrast, noise = ink_contrast(_resized(np.asarray(grey, np.float32), WORK_SIDE, enlarge=False))
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
    threshold = _threshold(contrast, noise)
    if threshold is None:
        return out.astype(np.uint8)[..., None]
    mask = _without_specks(contrast >= threshold)
    if strokes:
        edges = np.where(_near(mask), contrast, 0.0)  # the kept ink and its soft edges only
        picture = _strokes(edges[_bounding_box(mask)], threshold, box)
    else:  # grey levels, stretched so that the ink's contrast is white
        picture = np.minimum(contrast[_bounding_box(mask)] / (2.0 * threshold), 1.0)
    picture = 255.0 * _resized(picture, box)
    top, left = _placement(picture) if centre_by_mass else _centred(picture)
    out[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return np.clip(np.round(out), 0, 255).astype(np.uint8)[..., None]


def ink_contrast(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """Each pixel's contrast from the paper toward full ink, 0 to 1, and the paper's noise.

    The paper's level is fitted over the whole picture (:func:`_paper_level`), so a lighting
    gradient or vignette drops out. The ink is the side, darker or lighter than the paper, whose
    tail beyond the noise weighs more. Dark ink is measured as a fraction of the paper's
    brightness (uneven lighting scales both alike), light ink as a fraction of the way from the
    paper to white.

    Args:
      grey: float grey levels ``[H, W]``, 0 to 255.

    Returns:
      The contrast ``[H, W]`` and the paper's noise (a standard deviation) in the same units.
    """
    paper = _paper_level(grey)
    residual = grey - paper
    noise = _spread(residual)
    if _tail(-residual, noise) > _tail(residual, noise):  # dark ink on lighter paper
        grey, paper = 255.0 - grey, 255.0 - paper
    scale = np.maximum(255.0 - paper, 1.0)
    return np.clip((grey - paper) / scale, 0.0, 1.0), noise / float(np.median(scale))


def _resized(image: np.ndarray, side: int, *, enlarge: bool = True) -> np.ndarray:
    """``image`` (float) resized so that its longer side is ``side`` pixels.

    Shrinking averages the pixels each new pixel covers (antialiased, as the MNIST digits were
    size-normalised); enlarging interpolates bilinearly, or is skipped when ``enlarge`` is False.
    """
    scale = side / max(image.shape)
    if scale > 1.0 and not enlarge:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    method = Image.Resampling.BOX if scale < 1.0 else Image.Resampling.BILINEAR
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize(size, method)
    return np.asarray(resized)


def _paper_level(grey: np.ndarray) -> np.ndarray:
    """The paper's grey level under the ink: a quadratic surface fitted robustly to ``grey``.

    Fitted to a copy area-averaged to at most :data:`FIT_SIDE` pixels on a side, again and again
    to the pixels within :data:`FIT_SIGMAS` spreads of the last fit's typical residual: the ink,
    a minority of the pixels, falls out of the fit whichever side of the paper it lies.
    """
    small = _resized(grey, FIT_SIDE, enlarge=False)
    terms = _quadratic_terms(small.shape)
    values = small.ravel().astype(np.float64)
    level = np.full_like(values, np.median(values))
    for _ in range(FIT_ROUNDS):
        residual = values - level
        keep = np.abs(residual - np.median(residual)) <= FIT_SIGMAS * max(_spread(residual), 1.0)
        coefficients = np.linalg.lstsq(terms[keep], values[keep], rcond=None)[0]
        level = terms @ coefficients
    return (_quadratic_terms(grey.shape) @ coefficients).reshape(grey.shape).astype(np.float32)


def _quadratic_terms(shape: tuple[int, int]) -> np.ndarray:
    """``[H * W, 6]``: 1, x, y, x^2, xy, y^2 at every pixel, x and y running from -1 to 1."""
    y, x = np.meshgrid(
        np.linspace(-1.0, 1.0, shape[0]), np.linspace(-1.0, 1.0, shape[1]), indexing="ij"
    )
    x, y = x.ravel(), y.ravel()
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _spread(values: np.ndarray) -> float:
    """A robust standard deviation: 1.4826 times the median absolute deviation."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _tail(residual: np.ndarray, noise: float) -> float:
    """The sum of ``residual`` beyond :data:`NOISE_SIGMAS` noise levels above zero."""
    return float(np.clip(residual - NOISE_SIGMAS * noise, 0.0, None).sum())


def _threshold(contrast: np.ndarray, noise: float) -> float | None:
    """The ink's edge: half its contrast, above the noise; None when nothing stands out.

    The ink's contrast is the :data:`INK_PERCENTILE` percentile of the pixels above the noise
    floor (:data:`NOISE_SIGMAS` noise levels, and at least :data:`MIN_CONTRAST`). Half of it is
    where a blurred stroke's edge lies, so the strokes keep their width.
    """
    floor = max(NOISE_SIGMAS * noise, MIN_CONTRAST)
    ink = contrast[contrast > floor]
    if ink.size == 0:
        return None
    return max(floor, 0.5 * float(np.percentile(ink, INK_PERCENTILE)))


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its connected parts smaller than :data:`SPECK` times the largest."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return np.isin(labels, 1 + np.flatnonzero(sizes >= SPECK * sizes.max()))


def _near(mask: np.ndarray) -> np.ndarray:
    """The pixels within :data:`NEAR` pixels of ``mask`` (its strokes' soft edges)."""
    return ndimage.distance_transform_edt(~mask) <= NEAR


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of ``mask``'s bounding box (``mask`` holds at least one pixel)."""
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def _strokes(contrast: np.ndarray, threshold: float, box: int) -> np.ndarray:
    """The digit's ink (0 or 1) at :data:`FINE` times its fitted size or finer, MNIST's width.

    The crop is enlarged before it is binarised, so that its edges fall between the pixels of
    the 28x28 image; then its strokes are brought to MNIST's width (:func:`_mnist_width`).
    """
    fine = _resized(contrast, max(FINE * box, *contrast.shape))
    ink = fine >= min(threshold, fine.max())  # interpolation may lower a lone pixel
    return _mnist_width(ink[_bounding_box(ink)], box).astype(np.float32)


def _mnist_width(ink: np.ndarray, box: int) -> np.ndarray:
    """``ink`` dilated or eroded so that, fitted in ``box``, its strokes are as wide as MNIST's.

    The width, in pixels of the 28x28 image, is brought into :data:`STROKE_WIDTHS`. Dilating or
    eroding by ``r`` changes the strokes and the longer side alike by ``2r``; ``r`` is solved for
    the width wanted. A blob (ink less than :data:`BLOB` times as long as it is wide: a filled
    shape, no strokes) is not eroded, and neither is ink that erosion would wipe out.
    """
    height, width = max(ink.shape), stroke_width(ink)
    wanted = float(np.clip(width * box / height, *STROKE_WIDTHS)) / box  # of the longer side
    radius = (wanted * height - width) / (2.0 * (1.0 - wanted))
    if radius > 0.5:
        ink = ndimage.distance_transform_edt(~np.pad(ink, int(np.ceil(radius)))) <= radius
    elif radius < -0.5 and ink.sum() >= BLOB * width**2:
        eroded = ndimage.distance_transform_edt(ink) > -radius
        ink = eroded if eroded.any() else ink
    return ink[_bounding_box(ink)]


def stroke_width(mask: np.ndarray) -> float:
    """The mean width of ``mask``'s strokes in pixels: four times their mean depth, less 2.

    A pixel's depth is its distance to the nearest pixel outside (beyond the array's edge too);
    across a long band an even ``w`` pixels wide the depths run 1, 2, ... up to ``w / 2`` and
    back down, averaging ``w / 4 + 1 / 2``.
    """
    if not mask.any():
        return 0.0
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))
    return 4.0 * float(depth[np.pad(mask, 1)].mean()) - 2.0


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


# How each dataset's images were made: the object's fitted size, how it was centred, whether it
# is drawn as strokes.
DATASET_FRAMING = {
    "mnist": {"box": BOX_SIZE, "centre_by_mass": True, "strokes": True},
    "fashion_mnist": {"box": MNIST_SIZE, "centre_by_mass": False, "strokes": False},
}


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
    return to_mnist(read_image(path), **DATASET_FRAMING[dataset])
