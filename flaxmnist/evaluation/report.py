"""One self-contained HTML page per evaluated run: config, model summary, history, metrics, figures.

Figures are embedded as base64 PNGs, so ``report.html`` can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flaxmnist.storage.files import write_text_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; padding: 0 1rem; max-width: 1100px;
       color: #222; }
.scroll { overflow-x: auto; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
figure { display: inline-block; margin: 0.5rem; vertical-align: top; max-width: 100%; }
figure img { max-width: min(520px, 100%); height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; text-align: center; }
.headline { font-size: 1.2rem; margin: 0.8rem 0; }
"""


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of dict rows (floats to 4 decimals)."""
    if not rows:
        return "<p>(none)</p>"
    columns = list(columns or rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def embedded_image(path: Path) -> str:
    """An <img> tag with the PNG inlined."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def render(
    *,
    title: str,
    headline: str,
    config: Mapping[str, Any],
    model_summary: str,
    history: Sequence[Mapping[str, Any]],
    metrics_rows: Sequence[Mapping[str, Any]],
    class_report: str,
    figures: Mapping[str, Path],
    notes: Sequence[str] = (),
) -> str:
    """The report page as an HTML string."""
    config_rows = [{"field": k, "value": v} for k, v in sorted(config.items())]
    figure_html = "".join(
        f"<figure>{embedded_image(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, path in figures.items()
    )
    notes_html = "".join(f"<p><em>{html.escape(n)}</em></p>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="headline">{html.escape(headline)}</p>
{notes_html}
<h2>Metrics</h2>{table(metrics_rows)}
<h2>Classification report</h2><pre>{html.escape(class_report)}</pre>
<h2>Figures</h2>{figure_html}
<h2>Training history</h2>{table(history)}
<h2>Model</h2><pre>{html.escape(model_summary)}</pre>
<h2>Config</h2>{table(config_rows)}
</body></html>
"""


def write_report(path: Path, **sections: Any) -> None:
    """Renders the page (see :func:`render`) and writes it atomically."""
    write_text_atomic(path, render(**sections))
