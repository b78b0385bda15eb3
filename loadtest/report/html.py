"""The report's `index.html`: the summary tables and the plots, static and self-contained.

No script, no external URL: inline CSS and `<img>` tags naming the PNGs beside the page, so the
folder can be copied, zipped or served as it is. Every value is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

DISTRIBUTIONS = (
    ("TTFT", "ttft_s", 1.0, "s"),
    ("TTST", "ttst_s", 1.0, "s"),
    ("TPOT", "tpot_s", 1000.0, "ms"),
    ("E2E", "e2e_s", 1.0, "s"),
)
QUANTILES = ("mean", "p50", "p90", "p99", "max")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { display: inline-block; margin: 0.5em; }
figcaption { font-size: 0.9em; color: #555; }
img { max-width: 520px; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclass(frozen=True, slots=True)
class Plot:
    file: str
    caption: str


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The scalar figures of a `summarize` result, labelled."""
    slo = summary.get("slo") or {}
    met = summary.get("slo_met")
    done = summary.get("completed") or 0
    rows = [
        ("requests", _fmt(summary.get("requests"))),
        ("completed", _fmt(done)),
        ("errors", _fmt(summary.get("errors"))),
        ("JCT (s)", _fmt(summary.get("jct_s"))),
        ("throughput (requests/s)", _fmt(summary.get("throughput_rps"))),
        ("output tokens/s", _fmt(summary.get("output_tokens_per_s"))),
        (
            f"SLO met (TTFT ≤ {_fmt(slo.get('ttft_s'))} s, TPOT ≤ {_fmt(slo.get('tpot_s'))} s)",
            f"{_fmt(met)} ({100.0 * (met or 0) / done:.1f}%)" if done else _fmt(met),
        ),
        ("goodput (requests/s meeting the SLO)", _fmt(summary.get("goodput_rps"))),
        ("cached / prompt tokens", _fmt(summary.get("cached_ratio"))),
    ]
    shares = summary.get("read_path_share") or {}
    if shares:
        text = ", ".join(f"{k} {100.0 * v:.0f}%" for k, v in shares.items())
        rows.append(("read paths (of requests that said)", text))
    return rows


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _distributions(summary: Mapping[str, Any]) -> str:
    rows = []
    for label, key, scale, unit in DISTRIBUTIONS:
        dist = summary.get(key) or {}
        cells = [_fmt(None if dist.get(q) is None else dist[q] * scale) for q in QUANTILES]
        rows.append([f"{label} ({unit})", *cells])
    return _table(["", *QUANTILES], rows)


def render_html(
    title: str,
    summary: Mapping[str, Any],
    plots: Sequence[Plot],
    extra: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
    errors: Sequence[tuple[str, int]] = (),
) -> str:
    """The page; `errors`: the most common error messages with their counts."""
    scalars = _table(["figure", "value"], [*summary_rows(summary), *extra])
    if errors:
        scalars += "\n<h2>Errors</h2>\n" + _table(
            ["error", "requests"], [(message, _fmt(n)) for message, n in errors]
        )
    figures = "\n".join(
        f'<figure><img src="{escape(p.file)}" alt="{escape(p.caption)}">'
        f"<figcaption>{escape(p.caption)}</figcaption></figure>"
        for p in plots
    )
    note_html = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n<h2>Summary</h2>\n{scalars}\n"
        f"<h2>Latency</h2>\n{_distributions(summary)}\n{note_html}\n"
        f"<h2>Plots</h2>\n{figures}\n</body></html>\n"
    )
