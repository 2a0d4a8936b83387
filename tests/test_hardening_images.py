"""Image files for ``predict``: only plain raster formats, and sizes checked before decoding."""

import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from flaxmnist.errors import DataError
from flaxmnist.evaluation import digit_images

FORMATS = "PNG, JPEG, BMP, GIF, TIFF or WebP"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` grey pixels and holds none of them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A version 1.0 ``.npy`` header with this shape and dtype, and no data after it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * (63 - (10 + len(text)) % 64) + "\n"  # the data starts on a 64-byte boundary
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def test_an_eps_file_is_refused_with_one_line_naming_the_formats(tmp_path):
    path = tmp_path / "digit.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n")
    with pytest.raises(DataError) as error:
        digit_images.read_image(path)
    assert str(error.value) == f"{path}: not a {FORMATS} image"


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_each_accepted_format_reads(tmp_path, image_format):
    path = tmp_path / f"digit.{image_format.lower()}"
    Image.new("L", (8, 6), 200).save(path, format=image_format, lossless=True)
    assert digit_images.read_image(path).shape == (6, 8)


def test_a_format_pillow_knows_but_we_do_not_accept_is_refused(tmp_path):
    path = tmp_path / "digit.pcx"
    Image.new("L", (8, 8), 0).save(path, format="PCX")
    with pytest.raises(DataError, match=f"not a {FORMATS} image"):
        digit_images.read_image(path)


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning fails the test
@pytest.mark.parametrize(
    "size", [(10_000, 10_000), (20_000, 20_000)], ids=["pillow-warns", "pillow-refuses"]
)
def test_a_decompression_bomb_is_our_one_line_error(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(*size))
    with pytest.raises(DataError) as error:
        digit_images.read_image(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "too large for a digit" in message
    assert "at most 50,000,000 pixels" in message and "\n" not in message


def test_an_npy_header_claiming_a_huge_array_is_refused_before_its_data_is_read(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_header((100_000, 100_000)) + b"\0" * 64)
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        digit_images.read_image(path)
    assert time.perf_counter() - start < 0.5
    assert str(error.value) == (
        f"{path}: (100000, 100000) is too large for a digit (at most 50,000,000 pixels)"
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (_npy_header((28, 28), "<c16"), "expected uint8 or float grey levels, got complex128"),
        (_npy_header((28, 28), "|b1"), "expected uint8 or float grey levels, got bool"),
        (_npy_header((28, 28), "|O"), "expected uint8 or float grey levels, got object"),
        (_npy_header((28, 28, 3)), r"expected one image \[H, W\] or \[H, W, 1\]"),
        (_npy_header((28, 28)), "holds 0 of the 6,272 bytes its header announces"),
    ],
    ids=["complex", "bool", "object", "rgb", "truncated"],
)
def test_an_npy_header_that_is_no_grey_image_is_refused_before_its_data_is_read(
    tmp_path, header, message
):
    path = tmp_path / "bad.npy"
    path.write_bytes(header)
    with pytest.raises(DataError, match=message):
        digit_images.read_image(path)


def test_an_npy_image_with_one_channel_and_big_endian_integers_reads(tmp_path):
    np.save(tmp_path / "digit.npy", np.arange(12, dtype=">u2").reshape(3, 4, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grey = digit_images.read_image(tmp_path / "digit.npy")
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
