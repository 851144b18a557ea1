"""The report's one HTML page: figures as base64 PNG, inline CSS, no scripts, no links out,
so it opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from ..metric_display import DISPLAY, header, shown
from .data import Run

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
td.l { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code, pre { background: #f6f6f6; padding: 0.1em 0.3em; }
pre { padding: 0.6em; overflow-x: auto; }
.note { color: #666; font-size: 0.9em; }
"""

# (summary key, digits format) of the summary table; labels, units and scales from metric_display.py
SUMMARY_COLUMNS = [
    ("draft_utilization", "{:.1f}"),
    ("draft_idle_gap_mean_s", "{:.3g}"),
    ("draft_idle_gap_p99_s", "{:.3g}"),
    ("draft_idle_ratio_mean", "{:.1f}"),
    ("draft_task_time_mean_s", "{:.3g}"),
    ("draft_queue_wait_mean_s", "{:.3g}"),
    ("throughput_tokens_per_s", "{:.4g}"),
    ("ttft_mean_s", "{:.4g}"),
    ("tpot_mean_s", "{:.3g}"),
    ("measured_s", "{:.4g}"),
]


def _num(v: Any, scale: float = 1.0, fmt: str = "{:.4g}") -> str:
    if v is None or isinstance(v, bool):
        return "-" if v is None else str(v)
    try:
        return fmt.format(shown(float(v), scale))
    except (TypeError, ValueError):
        return escape(str(v))


def summary_table(runs: list[Run]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in ["run", "source", "N", *(header(k) for k, _ in SUMMARY_COLUMNS)])
    rows = []
    for r in runs:
        cells = [f"<td>{escape(r.label)}</td>", f"<td class=l>{escape(r.source)}</td>", f"<td>{r.n_targets}</td>"]
        cells += [f"<td>{_num(r.summary.get(k), DISPLAY[k].scale, f)}</td>" for k, f in SUMMARY_COLUMNS]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class=summary><tr>{head}</tr>\n" + "\n".join(rows) + "</table>"


def _provenance_items(r: Run) -> list[tuple[str, str]]:
    p = r.provenance
    items = [("run directory", str(r.path)), ("scenario", str(p.get("scenario", r.name))),
             ("source", r.source)]
    for key, label in (("scenario_hash", "scenario hash"), ("seed", "seed"), ("mode", "mode"),
                       ("starsim_version", "starsim"), ("torch", "torch"), ("date", "date"),
                       ("temperature", "temperature"), ("wall_time_s", "wall time (s)"),
                       ("events_simulated", "events simulated")):
        if p.get(key) is not None:
            v = p[key]
            items.append((label, f"{v:.4g}" if isinstance(v, float) else str(v)))
    for role, m in (p.get("models") or {}).items():
        if isinstance(m, dict):
            what = m.get("path") or m.get("spec") or m.get("kind")
            sha = m.get("weights_sha256")
            items.append((f"{role} model", f"{what}" + (f" (weights sha256 {sha[:16]}...)" if sha else "")))
    meta = r.records.meta
    items.append(("clock", f"t_end {float(meta['t_end']):.6g} s, warm-up {meta.get('warmup_s', 0)} s, "
                           f"cool-down {meta.get('cooldown_s', 0)} s, window {meta['window_s']} s"))
    return items


def provenance(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        rows = "".join(f"<tr><td>{escape(k)}</td><td class=l>{escape(v)}</td></tr>" for k, v in _provenance_items(r))
        parts.append(f"<h3>{escape(r.display)}</h3>\n<table>{rows}</table>")
    return "\n".join(parts)


def page(title: str, runs: list[Run], figures: list[tuple[str, str, str, bytes]], command: str,
         notes: list[str]) -> str:
    """The whole page. ``figures``: (anchor, heading, paragraph, png bytes) in order."""
    toc = "".join(f'<li><a href="#{a}">{escape(h)}</a></li>' for a, h, _, _ in figures)
    body = []
    for anchor, heading, text, png in figures:
        b64 = base64.b64encode(png).decode("ascii")
        body.append(f'<h2 id="{anchor}">{escape(heading)}</h2>\n<p>{escape(text)}</p>\n'
                    f'<img alt="{escape(heading)}" src="data:image/png;base64,{b64}">')
    note_html = "".join(f"<p class=note>{escape(n)}</p>" for n in notes)
    runs_list = ", ".join(escape(r.display) for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p>Runs: {runs_list}. Every number below comes from each run's <code>summary.json</code> (computed by
<code>starsim.metrics</code> over the measurement window, warm-up and cool-down dropped); the figures are
drawn from the run's record tables.</p>
<h2 id="summary">Key metrics</h2>
{summary_table(runs)}
{note_html}
<ul>{toc}</ul>
{chr(10).join(body)}
<h2 id="provenance">Provenance</h2>
{provenance(runs)}
<h2 id="command">Command</h2>
<pre>{escape(command)}</pre>
</body>
</html>
"""
