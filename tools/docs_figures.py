"""Writes the figures README and docs show of a run: its evaluation figures and the serve page.

    python tools/docs_figures.py                    # trains two presets, then the figures
    python tools/docs_figures.py --out=/tmp/figures

Trains the `cnn_simple` preset (MNIST) and the `mlp` preset (Fashion-MNIST) on the vendored data
into ``--workdir`` (a temporary folder by default) and evaluates both. Into ``--out`` (default
docs/figures) go `cnn_simple`'s ``predictions.png`` and ``training_curves.png``, `mlp`'s
confusion matrix as ``fashion_mlp_confusion.png``, and ``serve.png``: headless Chromium's view of
``python -m flaxmnist.serve`` on the `cnn_simple` run after a 2 was drawn on its pad in one
stroke. serve.png needs Chromium and chromedriver (Debian: ``apt-get install
chromium chromium-driver``) and selenium (the ``dev`` extra). Bad input (no Chromium, a folder
that cannot be written) ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import flags

from flaxmnist import cli, console, errors
from flaxmnist.config_validation import validate_workdir
from flaxmnist.errors import FlaxmnistError
from flaxmnist.storage import files

REPO_ROOT = Path(__file__).resolve().parents[1]
# (preset, figure the evaluation writes, the name docs use for it)
FIGURES = (
    ("cnn_simple", "predictions", "predictions"),
    ("cnn_simple", "training_curves", "training_curves"),
    ("mlp", "confusion_matrix", "fashion_mlp_confusion"),
)
SERVED_PRESET = "cnn_simple"
# A hand-drawn 2 in pad pixels (the pad is 280 × 280): the hook, the diagonal, the base.
STROKE_OF_A_2 = [
    (87, 88), (94, 56), (119, 41), (149, 42), (179, 61), (194, 96), (184, 136),
    (144, 186), (104, 226), (76, 234), (140, 229), (212, 222),
]  # fmt: skip
WINDOW = (800, 520)  # serve.png's size in pixels
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
URL = re.compile(r"https?://\S+")
SERVER_TIMEOUT_S = 120


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_string(
        "out", str(REPO_ROOT / "docs" / "figures"), "Where the PNGs go.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "workdir", "", "Where the runs go (default: a temporary folder).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "num_epochs", 0, "Epochs per run (0: each preset's own).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "data_dir", "", "The runs' data_dir (default: the vendored data).", flag_values=flag_values
    )


def train_and_evaluate(preset: str, workdir: Path, num_epochs: int, data_dir: str) -> Path:
    """Trains ``preset`` into ``workdir/preset`` and writes its evaluation; returns the run."""
    from flaxmnist import configs
    from flaxmnist.evaluation import evaluator
    from flaxmnist.training import loop

    config = configs.load(preset)
    if num_epochs:
        config.num_epochs = num_epochs
    if data_dir:
        config.data_dir = data_dir
    run = workdir / preset
    loop.train_and_evaluate(config, run)
    evaluator.evaluate_run(run)
    return run


def copy_figures(runs: dict[str, Path], out: Path) -> list[Path]:
    """Copies each run's evaluation figures named in :data:`FIGURES` into ``out``."""
    copied = []
    for preset, figure, name in FIGURES:
        copied.append(out / f"{name}.png")
        png = (runs[preset] / "eval" / "figures" / f"{figure}.png").read_bytes()
        files.write_bytes_atomic(copied[-1], png)
    return copied


def make_out_dir(out: Path) -> None:
    """Creates ``out``.

    Raises:
      FlaxmnistError: when it cannot be created.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlaxmnistError(f"cannot write --out {out}: {e.strerror or e}") from None


def browser_paths() -> tuple[str, str]:
    """Chromium's and chromedriver's paths.

    Raises:
      FlaxmnistError: when either is not installed.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise FlaxmnistError(
            "serve.png needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    return chromium, chromedriver


def serve_screenshot(run: Path, out: Path, browser: tuple[str, str]) -> Path:
    """Serves ``run``, draws :data:`STROKE_OF_A_2` on the page, saves what the page shows.

    ``browser``: Chromium's and chromedriver's paths (:func:`browser_paths`).
    """
    from flaxmnist.testing import draw_on_pad

    server = subprocess.Popen(
        [sys.executable, "-m", "flaxmnist.serve", f"--workdir={run}", "--port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = _server_url(server)
        with _browser(*browser) as page:
            page.get(url)
            draw_on_pad(page, [STROKE_OF_A_2])
            page.execute_script("window.scrollTo(0, 0)")
            files.write_bytes_atomic(out / "serve.png", page.get_screenshot_as_png())
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out / "serve.png"


def _server_url(server: subprocess.Popen) -> str:
    """The URL the serve command prints once it listens."""
    line = server.stdout.readline()  # the first line, printed when the page is ready
    match = URL.search(line)
    if match is None:
        raise FlaxmnistError(f"python -m flaxmnist.serve printed no URL: {line.strip()!r}")
    return match.group(0)


def _browser(chromium: str, chromedriver: str):
    """A headless Chromium showing :data:`WINDOW`'s size of page (a context manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--window-size={WINDOW[0]},{WINDOW[1]}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(chromedriver))
    width, height = WINDOW  # the page's own size: a headless window's frame takes some of it
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return browser


def main(argv: list[str]) -> None:
    """Trains and evaluates the runs, then writes the figures."""
    del argv
    options = flags.FLAGS
    out = Path(options.out)
    # A traceback goes to a temporary file, not among the figures.
    with errors.reported(None), tempfile.TemporaryDirectory(prefix="flaxmnist-figures-") as temp:
        # Everything that can be refused is, before the minutes of training (and before --out
        # is made).
        browser = browser_paths()
        if options.workdir:
            validate_workdir(Path(options.workdir))
        make_out_dir(out)
        workdir = Path(options.workdir or temp)
        runs = {
            preset: train_and_evaluate(preset, workdir, options.num_epochs, options.data_dir)
            for preset in dict.fromkeys(preset for preset, _, _ in FIGURES)
        }
        written = [*copy_figures(runs, out), serve_screenshot(runs[SERVED_PRESET], out, browser)]
    console.say("\n".join(map(str, written)))


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
