"""HTML building blocks of a report: escaping, tables, figures inlined, the page around the sections.

Everything a checkpoint or a user wrote (tensor names, sources, notes, settings) goes through `esc`; data
for the page's scripts goes through `json_for_script`, which also escapes `<`, so no text of the input can
close a <script> element or open one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from importlib.resources import files

from matplotlib.figure import Figure

# nothing may be fetched: images only from data: URIs, styles and scripts only those inside the page
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
SVG_LIMIT = 1_500_000  # bytes: a figure larger than this as SVG is inlined as PNG instead
PNG_DPI = 110


def esc(value: object) -> str:
    """Text for HTML, quotes included (safe in attributes too)."""
    return html.escape(str(value), quote=True)


def number(value: object, digits: int = 3) -> str:
    """A table cell's number: 3 significant decimals, '–' for missing, integers as they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return esc(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.{digits}f}" if 1e-3 <= abs(value) < 1e5 else f"{value:.{digits}g}"


def fixed(value: object, digits: int = 4, sign: bool = False) -> str:
    """A number with `digits` decimals, all of a column alike (losses and their differences: 0.0002 beside
    -0.0300, never 0.000156); with a sign when `sign`; '–' for missing."""
    if value is None or not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def json_for_script(data: object) -> str:
    """JSON for a <script type="application/json"> element: NaN as null, and `<`, `>`, `&` escaped as
    \\u003c..., so no string in the data can end the element."""
    text = json.dumps(finite(data), allow_nan=False, default=_plain, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def finite(data: object) -> object:
    """The data with every non-finite number (NaN, ±inf: a constant spectrum's log-histogram, say) as None:
    JSON has no such numbers, and the page draws None as a gap."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    if hasattr(data, "tolist"):  # numpy arrays and scalars
        return finite(data.tolist())
    return data


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def figure(fig: Figure, alt: str, caption: str = "") -> str:
    """A matplotlib Figure inlined: SVG (with its alt text as the accessible name), or PNG when the SVG is large;
    cut to what it draws (a title wider than the figure was clipped at the canvas's edge)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    svg = buffer.getvalue().decode("utf-8")
    if len(svg) <= SVG_LIMIT:
        svg = re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)  # matplotlib's RDF block
        body = svg.replace("<svg ", f'<svg role="img" aria-label="{esc(alt)}" ', 1)
    else:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight")
        body = f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    caption_html = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="plot">{body}{caption_html}</figure>'


def table(headers: list[str], rows: list[list[str]], caption: str = "", cls: str = "") -> str:
    """A plain table of already-escaped cells."""
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="{cls}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def key_values(pairs: list[tuple[str, object]], caption: str = "") -> str:
    """A two-column table of names and values (provenance, settings)."""
    return table(["", ""], [[esc(k), esc(v)] for k, v in pairs], caption, "kv")


def asset(name: str) -> str:
    return (files("alphaspec.report") / "assets" / name).read_text(encoding="utf-8")


def page(title: str, sections: list[str], subtitle: str = "") -> str:
    """The whole document: one file, styles and scripts inside it, nothing fetched."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{esc(title)}</title>
<style>{asset("report.css")}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><p class="subtitle">{esc(subtitle)}</p></header>
<main>
{"".join(sections)}
</main>
<footer><p>Made by alphaspec. Tables and figures read without scripts; scripts add sorting, filtering and
each matrix's spectrum.</p></footer>
<script>{asset("report.js")}</script>
</body>
</html>
"""
