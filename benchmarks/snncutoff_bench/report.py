"""Markdown tables of benchmark results (stdout of the commands)."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def compare_table(results: dict) -> str:
    """The compare report: one row per backend and policy, then timings and agreement."""
    cfg = results["config"]
    lines = [f"## snncutoff compare — {cfg['dataset']} / {cfg['model']} / route {cfg['route']}, T = {cfg['T']}", ""]
    if results.get("ann"):
        cached = " (cached checkpoint)" if results["ann"].get("cached") else ""
        lines.append(f"ANN accuracy: {_pct(results['ann']['accuracy'])}{cached}")
        lines.append("")
    lines += ["| backend | policy | accuracy | mean steps | speed-up | ops saved |",
              "|---|---|---:|---:|---:|---:|"]
    for name, e in results["backends"].items():
        rows = [("all T steps (SNN accuracy)", {"accuracy": e["snn_accuracy"], "mean_steps": cfg["T"],
                                                  "speedup": 1.0, "ops_saved": 0.0})]
        rows.append(("OCT (oracle)", e["oct"]))
        rows += list(e["policies"].items())
        for pol, r in rows:
            lines.append(f"| {name} | {pol} | {_pct(r['accuracy'])} | {r['mean_steps']:.2f} | "
                         f"{r['speedup']:.2f}x | {_pct(r.get('ops_saved'))} |")
    lines += ["", "| backend | version | run ms/step | step ms/step | trace collection s |", "|---|---|---:|---:|---:|"]
    for name, e in results["backends"].items():
        t = e.get("timing", {})
        run, step = (f"{t[k]:.2f}" if k in t else "–" for k in ("run_ms_per_step", "step_ms_per_step"))
        lines.append(f"| {name} | {e.get('version')} | {run} | {step} | {t.get('collect_seconds', 0):.1f} |")
    for pair, a in results.get("agreement", {}).items():
        lines.append("")
        lines.append(f"Cross-backend agreement {pair}: identical predictions at every step for "
                     f"{_pct(a['identical_predictions_every_step'])} of samples; "
                     f"max |output difference| {a['max_abs_output_difference']:.3g}")
    lines.append("")
    lines.append(f"Wall time: {results['wall_seconds']:.1f} s")
    return "\n".join(lines)


def sweep_table(results: dict) -> str:
    """One table per backend: the Pareto-optimal points of each policy family."""
    from .pipeline import pareto_front

    lines = []
    for name, families in results["backends"].items():
        lines += [f"## {name}", "", "| policy | value | accuracy | mean steps | speed-up |", "|---|---|---:|---:|---:|"]
        for family, points in families.items():
            for p in pareto_front(points):
                lines.append(f"| {family} | {p['policy']} | {_pct(p['accuracy'])} | {p['mean_steps']:.2f} | "
                             f"{p['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)
