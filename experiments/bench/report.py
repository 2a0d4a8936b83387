"""Where the benchmark's results go: ``results/`` beside this file, as JSON and markdown tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from flaxmnist.storage import files

RESULTS = Path(__file__).resolve().parent / "results"


def write_result_files(out: Path, stem: str, record: dict, table: str) -> None:
    """Writes ``OUT/STEM.json`` and ``OUT/STEM.md`` (each atomically) and prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(out / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    files.write_text_atomic(out / f"{stem}.md", table)
    print(table)


def sections_markdown(results: dict, renderers: dict[str, Callable[[dict], str]]) -> str:
    """The markdown of the sections in ``results`` that ``renderers`` (key → function) cover."""
    return "\n".join(render(results[key]) for key, render in renderers.items() if key in results)
