"""Renders a run's ``eval/report.html`` in headless Chromium and saves a full-page screenshot.

    python experiments/screenshot_report.py runs/convnet [--out report.png]

Needs Chromium (Debian: ``apt-get install chromium``). Used to check that the report renders in a
real browser; look at the PNG.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

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


def screenshot(report: Path, out: Path, width: int = 1200, height: int = 4000) -> Path:
    """Writes a PNG screenshot of ``report`` to ``out``."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: chromium not found (apt-get install chromium)")
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


def main() -> None:
    """Parses the arguments and takes the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    args = parser.parse_args()
    print(screenshot(args.run / "eval" / "report.html", args.out))


if __name__ == "__main__":
    main()
