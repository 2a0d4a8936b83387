r"""Accuracy of ``predict`` on digits that never were MNIST: handwriting scans, printed photos.

    python experiments/predict_external.py --workdir=runs/fast
    python experiments/predict_external.py --workdir=runs/fast --images=/tmp/digits \
        --handwriting=300 --photos=440

Builds two external sets of image files into ``--images``, the same files on every run (each is
drawn from its own fixed seed), in a ``dev`` split (the framing of
:mod:`flaxmnist.evaluation.digit_images` was tuned on it) and a held-out ``test`` split:

- ``handwriting``: scikit-learn's bundled handwritten digits (the UCI corpus, 8x8 images at 17
  grey levels, not MNIST), drawn as a scan would show them: dark ink on light paper, enlarged
  with bicubic interpolation to 64-400 pixels, with margins and a little noise. The splits hold
  different samples.
- ``photo``: 0-9 drawn with every font under ``--fonts`` whose digits render, made to look
  photographed: rotated by up to 10 degrees, a lighting gradient and vignette across the page,
  blur, sensor noise, coloured paper on some, JPEG compression, 600-3000 pixels on a side with
  the digit filling 20-70 % of its height. The splits use different fonts (alternate ones in
  name order).

Every file goes through :func:`flaxmnist.evaluation.prediction.predict_files`, the code behind
``python -m flaxmnist.predict``. Prints the table, writes ``OUT/predict_external.{md,json}``
(accuracy per set and split, per font, the CPU, the command) and ``--figure``: a few pictures
beside the 28x28 image the model saw, with its prediction. Bad input ends in one line on stderr
and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags, logging
from fontTools.ttLib import TTFont, TTLibError
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from flaxmnist import cli, console, errors
from flaxmnist.cpu import cpu_model
from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation import figures
from flaxmnist.storage import files

EXPERIMENTS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = EXPERIMENTS_DIR / "results"
FIGURE = EXPERIMENTS_DIR.parent / "docs" / "figures" / "predict_framing.png"
SPLITS = ("dev", "test")
SETS = ("handwriting", "photo")
SEED = 20240611  # every image draws from default_rng([SEED, set, split, index])
FONT_SUFFIXES = (".ttf", ".otf")
DIGITS = "0123456789"
DIGIT_GLYPHS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FIGURE_EXAMPLES = 4  # per set, from the test split


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image file of an external set and what it shows."""

    path: Path
    set: str
    split: str
    label: int
    font: str = ""  # the font's file name, for the photo set


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_string(
        "workdir",
        None,
        "Run directory of the trained model.",
        required=True,
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "images",
        "/tmp/predict-external",
        "Folder the image files are written to (replaced files, same content every time).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "handwriting", 300, "Handwritten digits per split.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "photos", 440, "Photo-like renders per split.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_string(
        "fonts", "/usr/share/fonts", "Folder searched for font files.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "out", str(RESULTS_DIR), "Folder for predict_external.{md,json}.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "figure", str(FIGURE), "Where the framing figure is written.", flag_values=flag_values
    )


# --------------------------------------------------------------------------------------------
# Handwriting: scikit-learn's UCI digits as scans
# --------------------------------------------------------------------------------------------


def load_handwriting() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits: images ``[N, 8, 8]`` in 0-16, and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FlaxmnistError(
            "the handwriting set needs scikit-learn: pip install -e '.[dev]'"
        ) from None
    digits = load_digits()
    return digits.images, digits.target


def handwriting_indices(count: int, total: int) -> dict[str, np.ndarray]:
    """Disjoint samples of ``count`` indices per split, from one fixed shuffle of ``total``."""
    if 2 * count > total:
        raise FlaxmnistError(f"--handwriting: at most {total // 2} per split, got {count}")
    order = np.random.default_rng(SEED).permutation(total)
    return {split: order[i * count : (i + 1) * count] for i, split in enumerate(SPLITS)}


def scan_of(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An 8x8 digit (0-16, ink high) as a scan: dark ink on light paper, enlarged, noisy."""
    margins = rng.integers(1, 4, size=4)  # top, bottom, left, right, in 8x8 cells
    ink = np.pad(digit / 16.0, ((margins[0], margins[1]), (margins[2], margins[3])))
    side = int(rng.integers(64, 401))
    scale = side / max(ink.shape)
    size = (round(ink.shape[1] * scale), round(ink.shape[0] * scale))
    ink = np.asarray(
        Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC)
    )
    paper, pen = rng.uniform(190, 245), rng.uniform(20, 90)
    grey = paper - (paper - pen) * np.clip(ink, 0.0, 1.0)
    grey = grey + rng.normal(0.0, rng.uniform(2.0, 6.0), grey.shape)
    return Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), mode="L")


def write_handwriting(folder: Path, count: int) -> list[Sample]:
    """Writes ``count`` scans per split into ``folder/SPLIT/handwriting/``."""
    images, labels = load_handwriting()
    samples = []
    for split, indices in handwriting_indices(count, len(images)).items():
        target = folder / split / "handwriting"
        target.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(indices):
            rng = np.random.default_rng([SEED, 0, SPLITS.index(split), i])
            path = target / f"{i:04d}-uci{index:04d}-{labels[index]}.png"
            scan_of(images[index], rng).save(path)
            samples.append(Sample(path, "handwriting", split, int(labels[index])))
    return samples


# --------------------------------------------------------------------------------------------
# Photo-like renders of printed digits
# --------------------------------------------------------------------------------------------


def digit_fonts(folder: Path) -> list[Path]:
    """The font files under ``folder`` that draw the ten digits, in name order.

    A font counts when its Unicode map sends "0" to "9" to the glyphs named ``zero`` to ``nine``:
    a font of symbols (Dingbats) maps them to pictures and is left out. Fonts of the same file
    name in two folders count once.
    """
    found = {}
    for path in sorted(folder.rglob("*")):
        wanted = path.suffix.lower() in FONT_SUFFIXES and path.name not in found
        if wanted and _draws_digits(path):
            found[path.name] = path
    return [found[name] for name in sorted(found)]


def _draws_digits(path: Path) -> bool:
    """Whether the font at ``path`` loads and maps the digits to the digit glyphs."""
    try:
        ImageFont.truetype(str(path), 48)
        glyphs = TTFont(path, lazy=True).getBestCmap() or {}
    except (OSError, TTLibError):
        return False
    return all(glyphs.get(ord(d)) == name for d, name in zip(DIGITS, DIGIT_GLYPHS, strict=True))


def split_fonts(fonts: Sequence[Path]) -> dict[str, list[Path]]:
    """Alternate fonts (in name order) to the dev and test splits."""
    if len(fonts) < 2:
        raise FlaxmnistError("the photo set needs at least two font files that draw digits")
    return {split: list(fonts[i :: len(SPLITS)]) for i, split in enumerate(SPLITS)}


def glyph(font_path: Path, digit: str, height: int) -> Image.Image:
    """``digit`` drawn in white on black, its ink ``height`` pixels tall, cropped to its ink."""
    _, top, _, bottom = ImageFont.truetype(str(font_path), 200).getbbox(digit)
    font = ImageFont.truetype(str(font_path), max(8, round(200 * height / (bottom - top))))
    left, top, right, bottom = font.getbbox(digit)
    image = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(image).text((2 - left, 2 - top), digit, fill=255, font=font)
    return image.crop(image.getbbox())


def photo_of(font_path: Path, digit: int, rng: np.random.Generator) -> Image.Image:
    """``digit`` printed in the font and photographed: tilted, unevenly lit, blurred, noisy."""
    width, height = photo_size(rng)
    letter = glyph(font_path, str(digit), round(rng.uniform(0.2, 0.7) * min(width, height)))
    letter = letter.rotate(rng.uniform(-10, 10), Image.Resampling.BICUBIC, expand=True)
    ink = np.zeros((height, width, 1), np.float32)
    top = int(rng.integers(0, max(1, height - letter.height)))
    left = int(rng.integers(0, max(1, width - letter.width)))
    patch = np.asarray(letter, np.float32)[: height - top, : width - left] / 255.0
    ink[top : top + patch.shape[0], left : left + patch.shape[1], 0] = patch
    paper, pen = paper_and_pen(rng)
    colour = (paper + (pen - paper) * ink) * lighting(height, width, rng)[..., None]
    image = Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8), mode="RGB")
    blur = rng.uniform(0.5, 2.5) * min(width, height) / 1000
    colour = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), np.float32)
    colour += rng.uniform(3, 10) * rng.standard_normal(colour.shape, np.float32)
    return Image.fromarray(np.clip(colour + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def paper_and_pen(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB colours: white-ish paper (coloured in 30 % of the photos) and a dark pen."""
    if rng.random() < 0.3:
        paper = rng.uniform(150, 255, size=3)
    else:
        paper = np.full(3, rng.uniform(215, 250))
    return paper.astype(np.float32), rng.uniform(10, 70, size=3).astype(np.float32)


def photo_size(rng: np.random.Generator) -> tuple[int, int]:
    """A phone photo's width and height: 600-3000 pixels on the longer side, 1:1, 4:3 or 16:9."""
    longer = float(np.exp(rng.uniform(np.log(600), np.log(3000))))
    shorter = longer / rng.choice([1.0, 4 / 3, 16 / 9])
    return (
        (round(longer), round(shorter)) if rng.random() < 0.5 else (round(shorter), round(longer))
    )


def lighting(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A light field ``[H, W]`` in (0, 1]: a linear fall-off in a random direction, a vignette."""
    rows, cols = np.ogrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * cols + np.sin(angle) * rows + 1.5) / 3.0  # 1/6 to 5/6
    vignette = (rows**2 + cols**2) / 2.0  # 0 at the centre, 1 in the corners
    light = 1.0 - rng.uniform(0.2, 0.5) * ramp - rng.uniform(0.0, 0.3) * vignette
    return light.astype(np.float32)


def photo_jobs(fonts: Sequence[Path], count: int, split: str) -> list[tuple[Path, int]]:
    """``count`` (font, digit) pairs: every pair of the split's fonts once, shuffled, then again."""
    pairs = [(font, digit) for font in fonts for digit in range(10)]
    order = np.random.default_rng([SEED, 1, SPLITS.index(split)]).permutation(len(pairs))
    return [pairs[order[i % len(pairs)]] for i in range(count)]


def write_photos(folder: Path, count: int, fonts: dict[str, list[Path]]) -> list[Sample]:
    """Writes ``count`` photo-like JPEGs per split, in its fonts, into ``folder/SPLIT/photo/``."""
    samples = []
    for split in SPLITS:
        target = folder / split / "photo"
        target.mkdir(parents=True, exist_ok=True)
        for i, (font, digit) in enumerate(photo_jobs(fonts[split], count, split)):
            rng = np.random.default_rng([SEED, 1, SPLITS.index(split), i])
            path = target / f"{i:04d}-{font.stem}-{digit}.jpg"
            photo_of(font, digit, rng).save(path, quality=int(rng.integers(60, 91)))
            samples.append(Sample(path, "photo", split, digit, font.name))
    return samples


# --------------------------------------------------------------------------------------------
# Predictions and results
# --------------------------------------------------------------------------------------------


def accuracy_rows(samples: Sequence[Sample], predicted: Sequence[int], key: str) -> list[dict]:
    """Images and accuracy per ``(key, split)`` of the samples, in order of first appearance."""
    groups: dict[tuple[str, str], list[bool]] = {}
    for sample, guess in zip(samples, predicted, strict=True):
        groups.setdefault((getattr(sample, key), sample.split), []).append(guess == sample.label)
    return [
        {key: name, "split": split, "images": len(hits), "accuracy": float(np.mean(hits))}
        for (name, split), hits in groups.items()
    ]


def summary(samples: Sequence[Sample], predicted: Sequence[int], run_info: dict) -> dict:
    """The JSON record: accuracy per set and split, per font, the misread files, the machine."""
    photos = [(s, p) for s, p in zip(samples, predicted, strict=True) if s.set == "photo"]
    return {
        **run_info,
        "cpu": cpu_model(),
        "sets": accuracy_rows(samples, predicted, "set"),
        "fonts": accuracy_rows(*zip(*photos, strict=True), "font") if photos else [],
        "misread": [
            {"file": str(s.path), "label": s.label, "predicted": p}
            for s, p in zip(samples, predicted, strict=True)
            if p != s.label
        ],
    }


def markdown(record: dict) -> str:
    """The results as Markdown: the sets, then the fonts, with the run, command and machine."""
    lines = [
        "# `predict` on digits that never were MNIST",
        "",
        f"Run `{record['run']}` (`{record['model']}`, {100 * record['mnist_test_accuracy']:.2f} % "
        f"on the MNIST test set; its `tested` checkpoint), on {record['cpu']}. Regenerate with "
        f"`{record['command']}`; `experiments/predict_external.py` describes the sets. The "
        "framing was tuned on the dev split only; the test split holds other samples and other "
        "fonts. Every file went through `predict_files`, the code behind "
        "`python -m flaxmnist.predict`.",
        "",
        "| set | split | images | accuracy |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['set']} | {r['split']} | {r['images']} | {100 * r['accuracy']:.1f} % |"
        for r in record["sets"]
    ]
    lines += ["", "| font (photo set) | split | images | accuracy |", "|---|---|---|---|"]
    lines += [
        f"| {r['font']} | {r['split']} | {r['images']} | {100 * r['accuracy']:.1f} % |"
        for r in sorted(record["fonts"], key=lambda r: (r["split"], r["font"]))
    ]
    return "\n".join(lines) + "\n"


def figure_rows(samples: Sequence[Sample], predicted: Sequence[int]) -> list[list[int]]:
    """Indices of the figure's examples, one row per set, then one of misread files.

    Each set's row holds its first :data:`FIGURE_EXAMPLES` test-split files; the last row the
    first misread test-split files, half of each set (left out when none is misread).
    """
    test = [i for i, s in enumerate(samples) if s.split == "test"]
    wrong = [i for i in test if predicted[i] != samples[i].label]
    rows = [_first_of(samples, test, name, FIGURE_EXAMPLES) for name in SETS]
    misread = [i for name in SETS for i in _first_of(samples, wrong, name, FIGURE_EXAMPLES // 2)]
    return [*rows, misread] if misread else rows


def _first_of(samples: Sequence[Sample], indices: list[int], name: str, count: int) -> list[int]:
    """The first ``count`` of ``indices`` whose sample belongs to set ``name``."""
    return [i for i in indices if samples[i].set == name][:count]


def framing_figure(
    rows: Sequence[Sequence[Sample]], framed: np.ndarray, predicted: Sequence[int]
) -> Figure:
    """Each sample's picture beside the 28x28 image the model saw, titled with its reading.

    ``framed`` and ``predicted`` follow the samples of ``rows`` in order, row after row; a row
    is named after its set, or "misread" when it mixes sets.
    """
    columns = max(len(row) for row in rows)
    fig = Figure(figsize=(2.4 * columns, 1.8 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(len(rows), 2 * columns)
    cells = [(r, c, sample) for r, row in enumerate(rows) for c, sample in enumerate(row)]
    for (row, column, sample), image, guess in zip(cells, framed, predicted, strict=True):
        picture = fig.add_subplot(grid[row, 2 * column])
        with Image.open(sample.path) as original:
            picture.imshow(original.convert("RGB"))
        picture.set_title(f"a {sample.label}", fontsize=9)
        seen = fig.add_subplot(grid[row, 2 * column + 1])
        seen.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        right = guess == sample.label
        seen.set_title(f"read {guess}", fontsize=9, color="tab:green" if right else "tab:red")
        for axes in (picture, seen):
            axes.set_xticks([])
            axes.set_yticks([])
        if column == 0:
            names = {s.set for s in rows[row]}
            picture.set_ylabel(names.pop() if len(names) == 1 else "misread", fontsize=9)
    return fig


def run_summary(workdir: str, model: str, command: str) -> dict:
    """The run's directory, model and MNIST test accuracy (its metrics.json), and the command."""
    metrics = json.loads((Path(workdir) / "metrics.json").read_text())
    return {
        "run": workdir,
        "model": model,
        "mnist_test_accuracy": metrics["test_accuracy"],
        "command": command,
    }


def predict_external(flag_values: flags.FlagValues, command: str) -> dict:
    """Builds the sets, classifies them with the run, writes the results and the figure."""
    out = Path(flag_values.out)
    with errors.reported(out):
        import flaxmnist  # JAX after the flags: a bad flag fails at once
        from flaxmnist.evaluation import prediction

        run = flaxmnist.load_run(flag_values.workdir, "tested")
        fonts = split_fonts(digit_fonts(Path(flag_values.fonts)))
        images = Path(flag_values.images)
        samples = write_handwriting(images, flag_values.handwriting)
        samples += write_photos(images, flag_values.photos, fonts)
        found = prediction.predict_files(run, [s.path for s in samples], top=1)
        predicted = [int(p.classes[0]) for p in found]
        info = run_summary(flag_values.workdir, run.config.model, command)
        record = summary(samples, predicted, info)
        out.mkdir(parents=True, exist_ok=True)
        files.write_json_atomic(out / "predict_external.json", record)
        files.write_text_atomic(out / "predict_external.md", markdown(record))
        rows = figure_rows(samples, predicted)
        chosen = [i for row in rows for i in row]
        fig = framing_figure(
            [[samples[i] for i in row] for row in rows],
            prediction.framed_images(run, [samples[i].path for i in chosen]),
            [predicted[i] for i in chosen],
        )
        figures.save_figure(fig, flag_values.figure)
    console.say(markdown(record))
    return record


def main(argv: list[str]) -> None:
    """Runs the study with the command line's flags."""
    logging.set_verbosity(logging.WARNING)
    command = shlex.join(["python", "experiments/predict_external.py", *sys.argv[1:]])
    predict_external(flags.FLAGS, command)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
