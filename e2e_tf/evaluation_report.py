"""Per-label evaluation report: a CSV of per-label P/R and a plot of P/R against label frequency.

The plot follows the paper's Figs. 8-10 (label frequency as bars, precision and
recall as lines, labels ordered by frequency), which show whether a model
still annotates the rare labels of a long-tailed vocabulary.
"""

import csv
import io
import os
import pathlib
import tempfile
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from e2e_tf import metrics

CSV_NAME = "per_label.csv"
PNG_NAME = "per_label.png"
CSV_COLUMNS = (
    "label_index",
    "label",
    "frequency",
    "ground_truth",
    "predicted",
    "correct",
    "precision",
    "recall",
)
# Labels named on the paper-style panel: this many most and least frequent ones.
_NAMED_LABELS_PER_END = 10


def write_per_label_report(
    y_true: Any,
    scores: Any,
    label_names: Sequence[str],
    out_dir: str | os.PathLike,
    k: int = 5,
    label_frequency: Any = None,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `per_label.csv` and `per_label.png` for a top-`k` annotation into `out_dir`.

    Args:
      y_true: 0/1 ground-truth matrix `(N, M)` of the evaluated split.
      scores: finite scores `(N, M)` (logits or probabilities).
      label_names: the `M` label names, in column order.
      out_dir: folder to write into; created if missing.
      k: labels per image.
      label_frequency: optional `(M,)` label counts that order the labels, usually
        the training-set counts (the paper's "frequency"). Defaults to the
        ground-truth counts of `y_true`.

    Returns:
      `(csv_path, png_path)`. Both files are written atomically (temp file + rename).
    """
    stats = metrics.per_label_precision_recall(y_true, scores, k)
    num_labels = stats.ground_truth.shape[0]
    label_names = [str(name) for name in label_names]
    if len(label_names) != num_labels:
        raise ValueError(
            f"`label_names` must have one name per label column ({num_labels}). "
            f"Received: len(label_names)={len(label_names)}"
        )
    if label_frequency is None:
        frequency = stats.ground_truth
    else:
        frequency = np.asarray(label_frequency)
        if frequency.shape != (num_labels,):
            raise ValueError(
                f"`label_frequency` must have shape ({num_labels},), one count per label. "
                f"Received: label_frequency.shape={frequency.shape}"
            )
        if not np.isfinite(frequency).all() or (frequency < 0).any():
            raise ValueError("`label_frequency` must hold finite, non-negative counts.")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    png_path = out_dir / PNG_NAME
    _write_atomically(csv_path, _csv_bytes(stats, label_names, frequency))
    _write_atomically(png_path, _plot_png_bytes(stats, label_names, frequency, k))
    return csv_path, png_path


def _csv_bytes(stats: metrics.PerLabelStats, names: list[str], frequency: np.ndarray) -> bytes:
    """One row per label, in dictionary order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for j, name in enumerate(names):
        writer.writerow(
            (
                j,
                name,
                _format_count(frequency[j]),
                int(stats.ground_truth[j]),
                int(stats.predicted[j]),
                int(stats.correct[j]),
                f"{stats.precision[j]:.6f}",
                f"{stats.recall[j]:.6f}",
            )
        )
    return buffer.getvalue().encode("utf-8")


def _format_count(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _frequency_order(frequency: np.ndarray) -> np.ndarray:
    """Label indices from the most to the least frequent; ties keep dictionary order."""
    return np.argsort(-np.asarray(frequency, np.float64), kind="stable")


def _plot_png_bytes(
    stats: metrics.PerLabelStats, names: list[str], frequency: np.ndarray, k: int
) -> bytes:
    """Two panels: every label by frequency rank, then the paper's named frequent/rare labels."""
    frequency = np.asarray(frequency, np.float64)
    order = _frequency_order(frequency)
    num_labels = len(order)
    figure = Figure(figsize=(12, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    all_axes, named_axes = figure.subplots(2, 1)
    figure.suptitle(
        f"Per-label top-{k} precision and recall against label frequency: {num_labels} labels, "
        f"mean P {stats.precision.mean():.3f}, mean R {stats.recall.mean():.3f}"
    )

    # Every label: per-label rates are noisy on the tail, so a running mean shows the trend.
    x = np.arange(num_labels)
    rates = _bars_with_rate_axis(all_axes, x, frequency[order], log_scale=True)
    window = max(1, min(15, num_labels // 10))
    for values, marker, color, name in _series(stats, order):
        rates.plot(x, values, marker, color=color, markersize=3, alpha=0.45, linestyle="none")
        rates.plot(x, _running_mean(values, window), "-", color=color, linewidth=2,
                   label=f"{name} (running mean of {window} labels)" if window > 1 else name)
    all_axes.set_xlabel("labels, from most to least frequent (rank)")
    all_axes.set_title("All labels", loc="left")
    _legend(all_axes, rates)

    # The paper's view (Figs. 8-10): the most and least frequent labels, named.
    if num_labels > 2 * _NAMED_LABELS_PER_END:
        groups = [order[:_NAMED_LABELS_PER_END], order[-_NAMED_LABELS_PER_END:]]
        named_axes.set_title(
            f"The {_NAMED_LABELS_PER_END} most and the {_NAMED_LABELS_PER_END} "
            "least frequent labels",
            loc="left",
        )
    else:
        groups = [order]
        named_axes.set_title("All labels, named", loc="left")
    shown = np.concatenate(groups)
    x = np.arange(len(shown)) + np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    rates = _bars_with_rate_axis(named_axes, x, frequency[shown], log_scale=False)
    start = 0
    for group in groups:
        group_x = x[start : start + len(group)]
        for values, marker, color, name in _series(stats, group):
            rates.plot(group_x, values, marker + "-", color=color, markersize=6, linewidth=1,
                       label=name if start == 0 else None)
        start += len(group)
    # The count goes into the tick label: rare labels' bars are too short to read.
    tick_names = [f"{names[j]} ({frequency[j]:g})" for j in shown]
    named_axes.set_xticks(x, tick_names, rotation=60, ha="right")
    _legend(named_axes, rates)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _series(stats: metrics.PerLabelStats, labels: np.ndarray):
    """(values, marker, colour, name) of the two rate series, as in the paper's figures."""
    return (
        (stats.precision[labels], "o", "tab:red", "precision"),
        (stats.recall[labels], "^", "tab:blue", "recall"),
    )


def _bars_with_rate_axis(axes, x: np.ndarray, counts: np.ndarray, log_scale: bool):
    """Frequency bars on `axes` (left axis); returns the right axis for P and R in [0, 1]."""
    axes.bar(x, counts, color="tab:green", alpha=0.45, width=0.8, label="label frequency")
    if log_scale and (counts > 0).any():
        axes.set_yscale("log")
        axes.set_ylim(bottom=0.8)
    axes.set_ylabel("label frequency (images)" + (", log scale" if log_scale else ""))
    axes.set_xlim(x.min() - 0.7, x.max() + 0.7)
    rates = axes.twinx()
    rates.set_ylim(-0.02, 1.05)
    rates.set_ylabel("precision / recall")
    return rates


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that shrinks its window at both ends (no edge bias toward 0)."""
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return sums / counts


def _legend(axes, rates) -> None:
    handles = axes.get_legend_handles_labels()[0] + rates.get_legend_handles_labels()[0]
    axes.legend(handles, [h.get_label() for h in handles], loc="lower right",
                bbox_to_anchor=(1.0, 1.0), ncol=len(handles), frameon=False,
                fontsize=9)


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Writes `data` to a temp file beside `path`, then renames it over `path`."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temp_name, 0o644)  # mkstemp makes it owner-only
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.remove(temp_name)
        raise
