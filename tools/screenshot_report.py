"""Renders a run's ``eval/report.html`` in headless Chromium and saves a full-page screenshot.

    python tools/screenshot_report.py runs/convnet [--out=report.png]

Needs Chromium (Debian: ``apt-get install chromium``). Used to check that the report renders in a
real browser; look at the PNG. Bad input (no run, no report, no Chromium) ends in one line on
stderr and exit status 2.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from absl import flags

from flaxmnist import cli, console, errors
from flaxmnist.errors import FlaxmnistError

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_string("out", "report.png", "Where the PNG goes.", flag_values=flag_values)


def screenshot(report: Path, out: Path, width: int = 1200, height: int = 4000) -> Path:
    """Writes a PNG screenshot of ``report`` to ``out``.

    Raises:
      FlaxmnistError: when ``report`` is missing or Chromium is not installed.
    """
    if not report.is_file():
        raise FlaxmnistError(f"{report} not found (python -m flaxmnist.evaluate writes it)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FlaxmnistError("chromium not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={out.resolve()}",
                report.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return out


def main(argv: list[str]) -> None:
    """Takes the screenshot of the run named on the command line."""
    out = Path(flags.FLAGS.out)
    with errors.reported(out.parent):
        if len(argv) != 2:
            raise FlaxmnistError("name one run directory: screenshot_report.py RUN [--out=PNG]")
        png = screenshot(Path(argv[1]) / "eval" / "report.html", out)
    console.say(str(png))


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main, positional="run directory")
