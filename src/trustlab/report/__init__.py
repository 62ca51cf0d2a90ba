"""HTML report of a run folder: summary, metrics, tables and plots in one self-contained file.

Areas put what they want shown into the run folder (``summary.json``, ``tables/*.json``,
``plots/*.png``); the report renders whatever is there, plus the curves of every numeric
field of ``metrics.jsonl`` that has more than one point, so no area needs report code of its own.

Figures read as in a paper: the summary's headline figures first (accuracy, likelihood,
replication, the reductions), counts with thousands separators, units taken from the figure's
name (``macs`` in millions, ``bytes`` in MB, ``seconds``, accuracies in %, ``_points``,
``reduction``/``ratio`` as ×), and paths that exist shown relative to the report.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import yaml

from trustlab.runs import RunDir, atomic_save_figure, atomic_write_text, finished


def _segments(records: list[dict]) -> list[list[dict]]:
    """The records split where the step stops advancing: a job of several stages (search, fine-tune) or a
    sweep (one fit per rank) counts steps from the start in each part."""
    parts: list[list[dict]] = []
    for r in records:
        if "step" not in r:
            continue
        if not parts or r["step"] <= parts[-1][-1]["step"]:
            parts.append([])
        parts[-1].append(r)
    return parts


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


NOT_LEARNING = ("epoch", "lr", "minutes", "seconds", "time")  # counters, schedules and clocks: logged, not curves


def _learning(key: str) -> bool:
    """Whether a metric says how learning goes (a loss, an accuracy, a copy rate), not when or at what rate."""
    return not any(key == k or key.endswith("_" + k) or key.startswith(k + "_") for k in NOT_LEARNING)


def _set(value) -> bool:
    """Whether a summary figure or setting has a value to show (unset ones, None or empty, are left out)."""
    return value is not None and value != {} and value != []


def _settings(doc):
    """A run configuration without its unset settings."""
    if isinstance(doc, dict):
        return {k: _settings(v) for k, v in doc.items() if _set(v)}
    return doc


def _part_names(parts: list[list[dict]]) -> list[str]:
    """The keys that name the parts: labels (text or integers, e.g. ``stage``, ``rank``) constant
    within each part and different between them."""
    if len(parts) < 2:
        return []

    def names_parts(key: str) -> bool:
        labels = all(isinstance(r.get(key), (str, int)) for p in parts for r in p)
        constant = all(len({r.get(key) for r in p}) == 1 for p in parts)
        return labels and constant and len({p[0].get(key) for p in parts}) > 1

    return [k for k in sorted({k for p in parts for r in p for k in r} - {"step"}) if names_parts(k)]


def plot_metric_curves(run: RunDir) -> Path | None:
    """One panel per numeric metric against step, a line per stage or sweep point (named by the keys that
    are constant within each part and differ between them, e.g. ``stage`` or ``rank``); None when there is
    nothing to plot."""
    parts = _segments(run.metrics())
    keys = sorted({k for p in parts for r in p for k, v in r.items() if k != "step" and _numeric(v) and _learning(k)})
    names = _part_names(parts)
    keys = [k for k in keys if k not in names and len({r["step"] for p in parts for r in p if k in r}) > 1]  # a dot is no curve
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    labels = [", ".join(f"{k} {part[0][k]}" for k in names if k in part[0]) or None for part in parts]
    for ax, key in zip(axes.flat, keys):
        for part, label in zip(parts, labels):
            pts = [(r["step"], r[key]) for r in part if key in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if names and len(parts) <= 8:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    path = run.plot_path("metrics")
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


HEADLINE_FIRST = ("test_acc", "acc_drop_points", "test_ll", "copy_rate", "relus", "relu_reduction", "macs", "mac_reduction",
                  "params", "compression", "speedup", "depth")  # name fragments, in the order a reader wants them


ROW_NAMES = ("figure", "layer", "block", "model", "method", "variant", "name", "op", "rank", "skip", "tau", "step")


def _order(keys: list[str]) -> list[str]:
    rank = {k: next((i for i, f in enumerate(HEADLINE_FIRST) if f in k), len(HEADLINE_FIRST)) for k in keys}
    return sorted(keys, key=lambda k: rank[k])  # stable: the area's own order within a rank


def number(x: float, spec: str = ",") -> str:
    """``x`` as ``spec`` formats it, or in scientific notation from a billion up: the exact tensor
    train of a large SPN has 1e60 entries, which no reader counts digit by digit."""
    return format(x, spec) if abs(x) < 1e9 else f"{x:.2e}"


def times(ratio: float, smaller: str = "smaller", larger: str = "larger") -> str:
    """A ratio of sizes (before / after) in words that stay true either way: "2.00× smaller" for 2,
    "20.00× larger" for 0.05 (never "0.05x smaller")."""
    if ratio >= 1:
        return f"{number(ratio, ',.2f')}× {smaller}"
    return f"{number(1 / ratio, ',.2f')}× {larger}" if ratio > 0 else f"infinitely {larger}"


def _fmt(v, key: str = "", base: Path | None = None) -> str:
    """One figure as text, its unit taken from its name (``key``); paths relative to ``base``."""
    k = key.lower()
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, (int, float)):
        if "macs" in k and abs(v) >= 1e5:
            return f"{v / 1e6:,.1f} M"
        if "bytes" in k:
            return f"{v / 1e6:,.2f} MB" if abs(v) >= 1e5 else f"{v / 1e3:,.1f} kB" if abs(v) >= 1e3 else f"{v:,} B"
        if k.endswith("_points"):
            return f"{v:+.2f} points".replace("-", "−")
        if ("reduction" in k or "ratio" in k or "speedup" in k) and isinstance(v, float):
            return f"{number(v, ',.2f')}×"
        if "acc" in k and isinstance(v, float) and 0 <= v <= 1:
            return f"{100 * v:.2f}%"
        if "seconds" in k and isinstance(v, float):
            return f"{v:,.3g} s"
        if isinstance(v, int):
            return number(v)
        return f"{v:,.4g}" if abs(v) < 1e4 else number(v, ",.0f")
    if isinstance(v, (list, dict)):
        return html.escape(json.dumps(v)[:200])
    text = str(v)
    if base is not None and ("/" in text or os.sep in text) and len(text) < 4096 and Path(text).exists():
        text = os.path.relpath(Path(text).resolve(), base.resolve())
    return html.escape(text)


def _table(rows: list[dict], limit: int = 400, base: Path | None = None) -> str:
    """Rows with the same keys; a figure/value table takes each value's unit from its figure's name."""
    if not rows:
        return "<p><em>empty</em></p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))  # files store keys sorted: order them for a reader
    cols = [c for c in ROW_NAMES if c in cols] + _order([c for c in cols if c not in ROW_NAMES])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

    def cell(r: dict, c: str) -> str:
        return _fmt(r.get(c, ""), str(r.get("figure", "")) if c == "value" else str(c), base)

    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in cols) + "</tr>" for r in rows[:limit])
    more = f"<p><em>{len(rows) - limit} more rows not shown</em></p>" if len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
"""


def render_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into the run folder and return its path."""
    run = RunDir.open(run_dir)
    plot_metric_curves(run)
    parts = [f"<h1>trustlab run: {html.escape(run.path.name)}</h1>", f"<p>kind: <b>{html.escape(run.kind)}</b> — folder <code>{html.escape(str(run.path.resolve()))}</code></p>"]
    summary = run.summary() if finished(run.path) else {}  # an unfinished run's report shows its curves and tables
    if summary:
        flat = [{"figure": k, "value": summary[k]} for k in _order(list(summary))
                if _set(summary[k]) and not isinstance(summary[k], (dict, list))]
        parts += ["<h2>Summary</h2>", _table(flat, base=run.path)]
        for k, v in summary.items():
            rows = [{"figure": a, "value": b} for a, b in v.items() if _set(b)] if isinstance(v, dict) else []
            if rows:
                parts += [f"<h3>{html.escape(k)}</h3>", _table(rows, base=run.path)]
    for path in sorted((run.path / "tables").glob("*.json")):
        doc = run.table(path.stem)
        parts += [f"<h2>{html.escape(str(doc.get('title', path.stem)))}</h2>", _table(doc["rows"], base=run.path)]
    plots = sorted((run.path / "plots").glob("*.png"))
    if plots:
        parts.append("<h2>Plots</h2>")
        for p in plots:
            data = base64.b64encode(p.read_bytes()).decode()
            parts.append(f"<h3>{html.escape(p.stem)}</h3><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'>")
    metrics = run.metrics()
    if metrics:
        parts += ["<h2>Metrics</h2>", _table(metrics)]
    settings = yaml.safe_dump({"kind": run.kind, "config": _settings(run.config)}, sort_keys=False)
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(settings)}</pre>"]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.path.name)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    out = run.path / "report.html"
    atomic_write_text(out, page)
    return out
