"""PNG plots of a compare run: accuracy per step with operating points, OCT histogram, Pareto curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import snncutoff as sc  # noqa: E402

_MARKERS = {"timestep": "s", "topk": "o", "confidence": "^", "conformal": "D", "oct": "*"}


def accuracy_per_step(results: dict, path: Path) -> Path:
    """Accuracy per step for every backend, with the OCT and each policy's operating point."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, entry) in enumerate(results["backends"].items()):
        acc = entry["accuracy_per_step"]
        color = f"C{i}"
        ax.plot(range(1, len(acc) + 1), acc, color=color, linestyle=("-", "--", ":", "-.")[i % 4],
                label=f"{name}: accuracy at step t")
        oct_ = entry["oct"]
        ax.plot(oct_["mean_steps"], oct_["accuracy"], "*", color=color, markersize=14, label=f"{name}: OCT (oracle)")
        for key, r in entry["policies"].items():
            ax.plot(r["mean_steps"], r["accuracy"], _MARKERS.get(key.split("_")[0], "x"), color=color,
                    markerfacecolor="none", markersize=8)
            ax.annotate(key, (r["mean_steps"], r["accuracy"]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points", color=color)
    if results.get("ann") and results["ann"].get("accuracy") is not None:
        ax.axhline(results["ann"]["accuracy"], color="gray", linestyle="--", linewidth=1, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("timestep / mean exit step (log scale)")
    ax.set_ylabel("test accuracy")
    curves = [e["accuracy_per_step"] for e in results["backends"].values()]
    lo = min(min(acc[len(acc) // 8:] or [0]) for acc in curves)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_title(f"{results['config']['dataset']} / {results['config']['model']}, T={results['config']['T']}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def oct_histogram(traces: dict[str, sc.Trace], path: Path) -> Path:
    """Histogram of the per-sample OCT of each backend's test trace."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, tr) in enumerate(traces.items()):
        steps = sc.optimal_cutoff(tr).exit_step.numpy()
        ax.hist(steps, bins=range(1, tr.T + 2), alpha=0.5, color=f"C{i}", label=name, align="left")
    ax.set_xlabel("optimal cutoff timestep (OCT)")
    ax.set_ylabel("samples")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto(curves: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> Path:
    """Accuracy versus mean exit step per backend and policy family (one line per sweep)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"timestep": "-", "topk": "-o", "confidence": "--^", "conformal": ":D"}
    for i, (name, families) in enumerate(curves.items()):
        for family, pts in families.items():
            xs, ys = zip(*sorted(pts)) if pts else ((), ())
            ax.plot(xs, ys, styles.get(family, "-"), color=f"C{i}", markersize=3, alpha=0.8,
                    linewidth=1.5 if i == 0 else 1.0, label=f"{name} {family}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean exit step (log scale)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    from io import BytesIO

    from snncutoff.io import atomic_write_bytes

    buf = BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    return atomic_write_bytes(buf.getvalue(), path)
