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


def results_by_cpu(path: Path) -> dict[str, dict]:
    """The records per CPU type in ``path`` (``{"cpus": {cpu_model(): record}}``; {} if missing).

    Each result file keeps a record per CPU type (``flaxmnist.cpu.cpu_model``): a run replaces
    its own CPU's record and keeps the others', so one file gathers every CPU measured.
    """
    return json.loads(path.read_text())["cpus"] if path.exists() else {}


def by_cpu_markdown(
    title: str, intro: str, by_cpu: dict[str, dict], render: Callable[[dict], str]
) -> str:
    """A document with ``render(record)`` of every CPU type under its own heading, by name."""
    parts = [f"# {title}\n\n{intro}\n"]
    parts += [f"## {name}\n\n{render(record)}" for name, record in sorted(by_cpu.items())]
    return "\n".join(parts)


def sections_markdown(results: dict, renderers: dict[str, Callable[[dict], str]]) -> str:
    """The markdown of the sections in ``results`` that ``renderers`` (key → function) cover."""
    return "\n".join(render(results[key]) for key, render in renderers.items() if key in results)
