"""HTML report of a bench run: a Pareto plot per trace set and the table."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from stopwise.errors import MissingExtraError


def _plot(sb: Any, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("the HTML report", "plot", "matplotlib") from exc
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    use_acc = any(c["accuracy"] is not None for c in sb.curves.values())
    for name, c in sb.curves.items():
        y = c["accuracy"] if use_acc else [1.0 - r for r in c["risk"]]
        if y is None:
            continue
        (line,) = ax.plot(c["cost_fraction"], y, marker=".", label=name)
        j = c["certified_index"]
        if j is not None:
            ax.plot([c["cost_fraction"][j]], [y[j]], marker="*", markersize=14, color=line.get_color(), markeredgecolor="black")
    ax.set_xlabel("tokens used (incl. probes) / full compute, test half")
    ax.set_ylabel("accuracy, test half" if use_acc else "agreement with full compute, test half")
    ax.set_title(f"{sb.trace_set}  (star: certified setting)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def write_report(benches: list[Any], out: Path, *, title: str = "stopwise bench", decisions: list[dict[str, Any]] | None = None,
                 images: list[str] | None = None) -> Path:
    """Write ``out/index.html`` (plots as PNG beside it) and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    keys = ["policy", "threshold", "certified", "n_calibration", "test_risk", "accuracy_full", "accuracy_policy", "tokens_saved", "chains_saved", "oracle_fraction"]
    for sb in benches:
        png = f"{sb.trace_set}.png"
        _plot(sb, out / png)
        parts.append(f"<h2>{html.escape(sb.trace_set)}</h2><p>{sb.n_questions} questions: {sb.n_calibration} calibration, {sb.n_test} test. "
                     f"Smallest certifiable epsilon: {sb.min_epsilon:.3f}{' (too small to certify the requested epsilon)' if sb.too_small else ''}.</p>")
        parts.append(f"<img src='{png}' alt='Pareto plot of {html.escape(sb.trace_set)}'>")
        parts.append("<table><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
        for r in sb.rows:
            d = r.to_dict()
            parts.append("<tr>" + "".join(f"<td>{_fmt(d[k])}</td>" for k in keys) + "</tr>")
        parts.append("</table>")
        if sb.skipped:
            parts.append("<p>Not applicable: " + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in sb.skipped.items()) + "</p>")
    if decisions:
        parts.append("<h2>Abstention, answer sets, selection, cascades</h2>")
        for name in images or []:
            parts.append(f"<img src='{html.escape(name)}' alt='{html.escape(name)}'><br>")
        dkeys = ["kind", "data", "method", "certified", "guarantee", "n_calibration", "n_test"]
        parts.append("<table><tr>" + "".join(f"<th>{k}</th>" for k in dkeys) + "<th>figures</th></tr>")
        for d in decisions:
            figs = {k: v for k, v in d.items() if k not in dkeys and k != "curve"}
            parts.append("<tr>" + "".join(f"<td>{_fmt(d.get(k))}</td>" for k in dkeys)
                         + f"<td style='text-align:left'>{', '.join(f'{k} {_fmt(v)}' for k, v in figs.items())}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Rows (JSON)</h2><pre>" + html.escape(json.dumps([r.to_dict() for sb in benches for r in sb.rows], indent=1)) + "</pre>")
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
