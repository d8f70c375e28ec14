"""PNG plots of a compare run: accuracy per step with operating points, OCT histogram, Pareto curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import snncutoff as sc  # noqa: E402

#: one colour and marker per rule family, the same in every plot
FAMILY_STYLE = {"timestep": ("C7", "s"), "topk": ("C0", "o"), "confidence": ("C1", "^"), "entropy": ("C2", "v"),
                "conformal": ("C3", "D"), "stability": ("C4", "P"), "learned": ("C5", "X")}
_BACKEND_LINES = ("-", "--", ":", "-.")


def _family(key: str) -> str:
    """The rule family of a policy row key (``topk_epsilon0``, ``risk_topk`` -> ``topk``)."""
    return key.removeprefix("risk_").split("_")[0]


def accuracy_per_step(results: dict, path: Path) -> Path:
    """Accuracy per step of every backend, with the OCT and each rule's operating point.

    Operating points are coloured by rule family; filled markers are the risk-controlled
    (certified) settings, hollow ones the hand-set values of the compare table.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    seen: set[tuple[str, bool]] = set()
    for i, (name, entry) in enumerate(results["backends"].items()):
        acc = entry["accuracy_per_step"]
        ax.plot(range(1, len(acc) + 1), acc, color="black", linestyle=_BACKEND_LINES[i % 4], linewidth=1,
                label=f"{name}: accuracy at step t")
        oct_ = entry["oct"]
        ax.plot(oct_["mean_steps"], oct_["accuracy"], "*", color="gold", markeredgecolor="black", markersize=15,
                label="OCT (oracle)" if i == 0 else None, zorder=5)
        for key, r in entry["policies"].items():
            family = _family(key)
            color, marker = FAMILY_STYLE.get(family, ("C9", "x"))
            certified = key.startswith("risk_")
            label = None
            if (family, certified) not in seen:
                seen.add((family, certified))
                label = f"{family}{' (certified)' if certified else ''}"
            ax.plot(r["mean_steps"], r["accuracy"], marker, color=color, markersize=8, alpha=0.85,
                    markerfacecolor=color if certified else "none", label=label, zorder=4)
    if results.get("ann") and results["ann"].get("accuracy") is not None:
        ax.axhline(results["ann"]["accuracy"], color="gray", linestyle="--", linewidth=1, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("timestep / mean exit step (log scale)")
    ax.set_ylabel("test accuracy")
    curves = [e["accuracy_per_step"] for e in results["backends"].values()]
    lo = min(min(acc[len(acc) // 8:] or [0]) for acc in curves)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_title(f"{results['config']['dataset']} / {results['config']['model']}, T={results['config']['T']}")
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
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
    """Accuracy versus mean exit step of every rule family over its parameter (colour: family, line: backend)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (name, families) in enumerate(curves.items()):
        for family, pts in families.items():
            xs, ys = zip(*sorted(pts)) if pts else ((), ())
            color, marker = FAMILY_STYLE.get(family, ("C9", "x"))
            ax.plot(xs, ys, linestyle=_BACKEND_LINES[i % 4], marker=marker, color=color, markersize=3, alpha=0.8,
                    linewidth=1.2, label=f"{family} ({name})")
    best = max((y for families in curves.values() for pts in families.values() for _, y in pts), default=1.0)
    ax.set_ylim(max(0.0, best - 0.1), min(1.0, best + 0.01))  # the region where a rule is worth using
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean exit step (log scale)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    from io import BytesIO

    from snncutoff.io import atomic_write_bytes

    buf = BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(buf.getvalue(), path)
