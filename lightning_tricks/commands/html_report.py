"""``report.html``: one self-contained page per command run, to open in any browser, offline, or to attach.

A command builds an :class:`HtmlReport` out of what it already has (check results, tables, figures,
Markdown it printed) and saves it in its output folder. The page needs nothing but itself: images are
embedded as base64 ``data:`` URIs, the CSS is inline, there is no script and no link to fetch, so it
renders the same from a laptop, a CI artifact or an e-mail. The standard library (``html``,
``base64``) writes it; matplotlib draws figures to PNG; Markdown is rendered by ``markdown-it-py``,
which Rich (a dependency) already installs.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from lightning_tricks.callbacks.recipe_check import CheckResult

#: the file every command writes in its output folder
FILE_NAME = "report.html"

# Small and readable without a framework; verdict colours are the usual traffic lights.
_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 16px 24px; color: #1d1d1f; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
.subtitle { color: #666; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0 12px; } th, td { border: 1px solid #ddd; padding: 4px 8px;
  text-align: left; vertical-align: top; } th { background: #f5f5f7; } td.num { text-align: right; }
.pass { color: #fff; background: #2e7d32; } .FAIL { color: #fff; background: #c62828; }
.INCONCLUSIVE { color: #000; background: #f9a825; } .badge { padding: 1px 6px; border-radius: 4px; font-weight: 600; }
.evidence { color: #444; font-size: 12px; } pre, code { font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; }
pre { background: #f5f5f7; padding: 8px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: 12px; }
img.pixels { image-rendering: pixelated; }
.wide { overflow-x: auto; max-width: 100%; }
"""


def png_bytes(image: Any) -> bytes:
    """PNG of a matplotlib figure, an HxW(xC) uint8 array, PNG bytes or a PNG file."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    buffer = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buffer, format="png", dpi=100)
    else:
        import matplotlib.image

        array = np.asarray(image)
        matplotlib.image.imsave(
            buffer, array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array, cmap="gray"
        )
    return buffer.getvalue()


def _image_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG header (IHDR), to show small pictures enlarged."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class HtmlReport:
    """A page under construction: a title, then sections of text, tables, figures and Markdown."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        written = f"written {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}"
        self.subtitle = f"{subtitle} · {written}" if subtitle else written
        self.parts: list[str] = []

    def section(self, heading: str) -> None:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def code(self, text: str) -> None:
        """Text to copy as it is (a command line, log lines)."""
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Numbers right-aligned with 4 significant digits; ``columns`` all empty: no header row."""
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = []
        for row in rows:
            cells = [
                f'<td class="num">{_cell(v)}</td>'
                if isinstance(v, (int, float))
                else f"<td>{html.escape(_cell(v))}</td>"
                for v in row
            ]
            body.append(f"<tr>{''.join(cells)}</tr>")
        head = f"<tr>{head}</tr>" if any(columns) else ""  # no header row for a list of (name, value)
        # In a box that scrolls sideways: a wide table (a study's trials) must not stretch the page.
        self.parts.append(f'<div class="wide"><table>{head}{"".join(body)}</table></div>')

    def markdown(self, text: str) -> None:
        """Markdown a command prints (its tables, lists, headings), with raw HTML escaped, not passed on."""
        from markdown_it import MarkdownIt

        self.parts.append(MarkdownIt("js-default").render(text))  # js-default: tables on, raw HTML off

    def figures(self, images: Mapping[str, Any]) -> None:
        """Figures side by side, each with its caption: ``{caption: figure, array, PNG bytes or file}``."""
        if not images:
            return
        items = []
        for caption, image in images.items():
            png = png_bytes(image)
            width, _ = _image_size(png)
            # A picture a few pixels wide (an 8x8 digit, a filter grid) is enlarged, with its pixels kept sharp.
            size = f' class="pixels" width="{width * max(1, 256 // max(width, 1))}"' if width < 256 else ""
            data = base64.b64encode(png).decode("ascii")
            alt = html.escape(caption, quote=True)
            items.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"{size}>'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        self.parts.append(f'<div class="gallery">{"".join(items)}</div>')

    def verdicts(self, results: Sequence[CheckResult]) -> None:
        """One row per check: its verdict, the numbers behind it, its finding and details; then its figures."""
        rows = []
        for r in results:
            evidence = "; ".join(f"{k}={_cell(v)}" for k, v in r.details.items() if not isinstance(v, (list, dict)))
            rows.append(
                f"<tr><td>{html.escape(r.name)}</td>"
                f'<td><span class="badge {r.status}">{r.status}</span></td>'
                f'<td class="num">{_cell(r.measured)}</td><td class="num">{_cell(r.expected)}</td>'
                f'<td>{html.escape(r.message)}<div class="evidence">{html.escape(evidence)}</div></td></tr>'
            )
        head = "<tr><th>check</th><th>verdict</th><th>measured</th><th>expected</th><th>finding and evidence</th></tr>"
        self.parts.append(f"<table>{head}{''.join(rows)}</table>")

    def render(self) -> str:
        title = html.escape(self.title)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_CSS}</style></head>\n<body>"
            f'<h1>{title}</h1><p class="subtitle">{html.escape(self.subtitle)}</p>\n'
            + "\n".join(self.parts)
            + "\n</body></html>\n"
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``<folder>/report.html``; return its path."""
        path = Path(folder) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path
