"""A :class:`.report.Report` as one self-contained HTML file: :func:`render`, :func:`write`.

The page needs nothing but itself: plots are drawn with matplotlib (Agg, no
display) and embedded as base64 PNG ``<img>`` elements; the style is inline.
Every string that comes from the job (column names, model names, hosts, error
texts) is HTML-escaped. A report of a job with no rows, a failed job, and
one without drift statistics render too: a plot without data is replaced by
a sentence saying so.

Sections: summary, throughput over time (from the tasks' timelines: each
task's rows so far at each output batch, summed over tasks per time bin),
latency per Arrow batch (histogram of the tasks' samples with P50/P90/P99),
batch sizes (rows per model call and per Arrow batch, per task), rows per
executor (host and Python worker pid), bad rows by reason (records that
carry ``bad_rows`` / ``bad_row_reasons`` / ``nonfinite``), output and input
distributions (from the merged sketches) with a table of their statistics.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import math
import time
from typing import Any

import numpy as np

_MAX_COLUMNS = 24  # distribution plots per side; the table lists every column
_TIME_BINS = 60


def write(report: Any, path: str) -> str:
    """Writes :func:`render`'s page to ``path``; returns ``path``."""
    page = render(report)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def render(report: Any) -> str:
    """The HTML page of ``report`` (a :class:`.report.Report`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError("Report.save needs matplotlib: pip install 'torchspark[report]'") from e
    records = report.task_records
    parts = [_summary(report)]
    parts.append(_section("Throughput over time", _throughput(records)))
    parts.append(_section("Latency per Arrow batch", _latency(report, records)))
    parts.append(_section("Batch sizes", _batch_sizes(records)))
    parts.append(_section("Rows per executor", _executors(records)))
    parts.append(_section("Bad rows", _bad_rows(records)))
    parts.append(_section("Output distributions", _distributions(report.output_stats, "output")))
    if report.input_stats:
        parts.append(_section("Input distributions", _distributions(report.input_stats, "input")))
    title = "torchspark report" + (" (FAILED)" if report.failed else "")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>" + "".join(parts) + "</body></html>\n"
    )


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:.2em .6em;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}"
    ".failed{background:#fde2e2;border:1px solid #d33;padding:.6em}.note{color:#666}"
    "img{max-width:100%}"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, body: str) -> str:
    return f"<h2>{_e(title)}</h2>{body}"


def _note(text: str) -> str:
    return f"<p class='note'>{_e(text)}</p>"


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    def cells(values: list[Any], tag: str) -> str:
        return "".join(
            f"<{tag}{' class=l' if i < left else ''}>{_e(v)}</{tag}>" for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    head = f"<tr>{cells(header, 'th')}</tr>" if header else ""
    return f"<table>{head}{body}</table>"


def _image(figure: Any, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _figure(width: float = 9.0, height: float = 3.2) -> tuple[Any, Any]:
    # A Figure of its own (Agg canvas), not pyplot's: no global backend or state.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _summary(report: Any) -> str:
    parts = []
    if report.failed or report.errors:
        errors = "".join(f"<li><code>{_e(e)}</code></li>" for e in report.errors)
        status = "The job failed." if report.failed else "Tasks reported errors."
        parts.append(f"<div class='failed'><b>{_e(status)}</b><ul>{errors}</ul></div>")
    rows = [
        ["rows", f"{report.rows:,}"],
        ["tasks", report.tasks],
        ["wall time", f"{report.wall_s:.2f} s"],
        ["rows/s", f"{report.rows_per_s:,.0f}"],
        [
            "latency p50 / p90 / p99",
            f"{report.p50_ms:.1f} / {report.p90_ms:.1f} / {report.p99_ms:.1f} ms",
        ],
        ["Arrow batches / model calls", f"{report.arrow_batches} / {report.model_calls}"],
        ["models", ", ".join(report.models)],
        ["devices", ", ".join(report.devices)],
        ["batch_size", ", ".join(map(str, report.batch_sizes))],
        ["intra-op threads", ", ".join(map(str, report.intra_op_threads))],
    ]
    if report.token_budgets:
        rows.append(["token budgets", ", ".join(map(str, report.token_budgets))])
    if report.rows_truncated:
        rows.append(["text rows truncated", f"{report.rows_truncated:,}"])
    started = min((r["start"] for r in report.task_records), default=None)
    if started is not None:
        rows.append(["started", time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))])
    if report.tasks == 0:
        parts.append(
            _note("No rows: the job ran no task (an empty DataFrame, or it failed first).")
        )
    return "".join(parts) + _table([], rows)


def _throughput(records: list[dict[str, Any]]) -> str:
    timelines = [r for r in records if r.get("timeline")]
    if not timelines:
        return _note("No timeline: no task scored a batch.")
    start = min(r["start"] for r in timelines)
    end = max(r["start"] + r["timeline"][-1][0] for r in timelines)
    span = max(end - start, 1e-3)
    # About four batch completions per bin at most: finer bins only show
    # when single batches finished, as spikes.
    points = sum(len(r["timeline"]) for r in timelines)
    edges = np.linspace(0.0, span, min(_TIME_BINS, max(10, points // 4)) + 1)
    done = np.zeros_like(edges)
    for r in timelines:
        points = np.asarray(r["timeline"], dtype=np.float64)
        seconds = np.concatenate([[0.0], points[:, 0]]) + (r["start"] - start)
        rows = np.concatenate([[0.0], points[:, 1]])
        done += np.interp(edges, seconds, rows, left=0.0, right=rows[-1])
    rate = np.diff(done) / np.diff(edges)
    figure, axes = _figure()
    axes.step(edges[1:], rate, where="pre", color="#1f77b4")
    axes.fill_between(edges[1:], rate, step="pre", alpha=0.25, color="#1f77b4")
    axes.set_xlabel("seconds since the first task started")
    axes.set_ylabel("rows/s, all tasks")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    return _image(figure, "throughput over time")


def _latency(report: Any, records: list[dict[str, Any]]) -> str:
    latencies = np.asarray([v for r in records for v in r.get("latency_ms", [])], dtype=float)
    if latencies.size == 0:
        return _note("No latency samples: no task scored a batch.")
    figure, axes = _figure()
    bins = min(50, max(5, latencies.size // 4))
    low, high = max(latencies.min(), 1e-3), latencies.max()
    if high / low > 20:  # a long tail (the first batch loads the model): log-spaced bins
        axes.hist(latencies, bins=np.geomspace(low, high * 1.001, bins + 1), color="#999999")
        axes.set_xscale("log")
    else:
        axes.hist(latencies, bins=bins, color="#999999")
    for value, name, color in (
        (report.p50_ms, "P50", "#2ca02c"),
        (report.p90_ms, "P90", "#ff7f0e"),
        (report.p99_ms, "P99", "#d62728"),
    ):
        axes.axvline(value, color=color, linestyle="--", label=f"{name} {value:.1f} ms")
    axes.set_xlabel("ms from submit to outputs, per Arrow batch")
    axes.set_ylabel("Arrow batches (sampled)")
    axes.legend()
    return _image(figure, "latency histogram")


def _batch_sizes(records: list[dict[str, Any]]) -> str:
    per_call = [r["rows"] / r["model_calls"] for r in records if r.get("model_calls")]
    per_arrow = [r["rows"] / r["arrow_batches"] for r in records if r.get("arrow_batches")]
    if not per_call and not per_arrow:
        return _note("No batches: no task scored a batch.")
    figure, axes = _figure()
    axes.hist(
        [per_call, per_arrow],
        bins=20,
        label=["rows per model call", "rows per Arrow batch"],
        color=["#1f77b4", "#bbbbbb"],
    )
    axes.set_xlabel("mean rows per batch, per task")
    axes.set_ylabel("tasks")
    axes.legend()
    return _image(figure, "batch sizes")


def _executors(records: list[dict[str, Any]]) -> str:
    if not records:
        return _note("No tasks.")
    rows: collections.Counter[str] = collections.Counter()
    tasks: collections.Counter[str] = collections.Counter()
    for r in records:
        key = f"{r.get('host', '?')} pid {r.get('pid', '?')}"
        rows[key] += r["rows"]
        tasks[key] += 1
    names = sorted(rows)
    figure, axes = _figure(9.0, max(1.6, 0.35 * len(names) + 0.8))
    axes.barh(range(len(names)), [rows[n] for n in names], color="#1f77b4")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("rows")
    axes.invert_yaxis()
    table = _table(
        ["executor (host, Python worker)", "tasks", "rows"],
        [[n, tasks[n], f"{rows[n]:,}"] for n in names],
    )
    return _image(figure, "rows per executor") + table


def _bad_rows(records: list[dict[str, Any]]) -> str:
    bad = sum(r.get("bad_rows", 0) for r in records)
    reasons: collections.Counter[str] = collections.Counter()
    nonfinite: collections.Counter[str] = collections.Counter()
    for r in records:
        reasons.update(r.get("bad_row_reasons") or {})
        nonfinite.update(r.get("nonfinite") or {})
    parts = [_note(f"{bad:,} bad rows.")]
    if reasons:
        ordered = reasons.most_common()
        shown = ordered[:15]
        figure, axes = _figure(9.0, max(1.6, 0.35 * len(shown) + 0.8))
        labels = [_shorten(m) for m, _ in shown]
        axes.barh(range(len(shown)), [c for _, c in shown], color="#d62728")
        axes.set_yticks(range(len(shown)), labels)
        axes.invert_yaxis()
        axes.set_xlabel("rows")
        parts.append(_image(figure, "bad rows by reason"))
        parts.append(_table(["reason", "rows"], [[m, f"{c:,}"] for m, c in ordered]))
    if nonfinite:
        parts.append(
            _table(
                ["output", "NaN/Inf values"], [[n, f"{c:,}"] for n, c in sorted(nonfinite.items())]
            )
        )
    return "".join(parts)


def _shorten(text: str, limit: int = 60) -> str:
    # matplotlib reads $...$ as mathtext: escape it in labels that come from errors.
    text = text.replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _distributions(stats: dict[str, Any], side: str) -> str:
    if not stats:
        return _note(f"No {side} statistics in this report.")
    rows = []
    for name, s in stats.items():
        rows.append(
            [name, f"{s.count:,}", f"{s.nan:,}", f"{s.inf:,}", f"{s.nulls:,}"]
            + [
                _number(v)
                for v in (
                    s.mean,
                    s.std,
                    s.min,
                    s.quantile(0.01),
                    s.quantile(0.5),
                    s.quantile(0.99),
                    s.max,
                )
            ]
        )
    table = _table(
        [side, "finite", "NaN", "Inf", "nulls", "mean", "std", "min", "p1", "p50", "p99", "max"],
        rows,
    )
    plotted = [(n, s) for n, s in stats.items() if s.count][:_MAX_COLUMNS]
    if not plotted:
        return table + _note("No finite values to plot.")
    from matplotlib.figure import Figure

    columns = min(3, len(plotted))
    lines = math.ceil(len(plotted) / columns)
    figure = Figure(figsize=(3.4 * columns, 2.4 * lines))
    grid = figure.subplots(lines, columns, squeeze=False)
    for axes, (name, s) in zip(grid.ravel(), plotted, strict=False):
        low, high = s.quantile(0.005), s.quantile(0.995)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, 41)
        axes.stairs(_counts_between(s.sketch, edges), edges, fill=True, color="#1f77b4")
        axes.set_title(_shorten(name, 40), fontsize=9)
        axes.tick_params(labelsize=7)
    for axes in grid.ravel()[len(plotted) :]:
        axes.axis("off")
    figure.tight_layout()
    note = (
        _note(f"Plotted: the first {_MAX_COLUMNS} of {len(stats)} columns (P0.5 to P99.5).")
        if len(stats) > _MAX_COLUMNS
        else _note("Each plot spans P0.5 to P99.5 of its column (from its sketch).")
    )
    return _image(figure, f"{side} distributions") + note + table


def _counts_between(sketch: Any, edges: np.ndarray) -> np.ndarray:
    """How many of the sketch's values fall between consecutive ``edges``, each
    bucket's count spread evenly over its interval ``(g^(i-1), g^i]`` (placing
    it at its representative value instead leaves a comb where plot bins are
    about as wide as buckets)."""
    values, counts = sketch.buckets()
    gamma = (1.0 + sketch.relative_accuracy) / (1.0 - sketch.relative_accuracy)
    upper = np.abs(values) * (gamma + 1.0) / 2.0  # g^i from the value 2 g^i / (g + 1)
    lower = upper / gamma
    negative = values < 0
    left = np.where(negative, -upper, lower)
    right = np.where(negative, -lower, upper)
    # Buckets are ascending and do not overlap: the CDF is piecewise linear
    # through (left, count before) and (right, count after) of each.
    after = np.cumsum(counts)
    x = np.column_stack([left, right]).ravel()
    y = np.column_stack([after - counts, after]).ravel().astype(np.float64)
    return np.diff(np.interp(edges, x, y))


def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "-"
    return f"{value:.4g}"
