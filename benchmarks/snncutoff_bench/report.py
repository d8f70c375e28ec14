"""Markdown tables of benchmark results (stdout of the commands)."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _certified(r: dict) -> str:
    if "certified_loss" not in r:
        return ""
    if r.get("value") is None:
        return "nothing certifiable: all T steps"
    return f"<= {100 * r['certified_loss']:g} pt (p={r['p_value']:.2g}, value {r['value']:g})"


def compare_table(results: dict) -> str:
    """The compare report: one row per backend and policy, then timings and agreement."""
    cfg = results["config"]
    lines = [f"## snncutoff compare — {cfg['dataset']} / {cfg['model']} / route {cfg['route']}, T = {cfg['T']}", ""]
    if results.get("ann"):
        cached = (f" (checkpoint {results['ann']['checkpoint']})" if results["ann"].get("given") else
                  " (cached checkpoint)" if results["ann"].get("cached") else "")
        lines.append(f"ANN accuracy: {_pct(results['ann']['accuracy'])}{cached}")
        lines.append("")
    data = results.get("data")
    if data:
        lines.append(f"Samples: {data['train']} train, {data['calibration']} calibration (held out from training; "
                     f"every rule is calibrated there), {data['test']} test. Risk control: loss vs all T steps "
                     f"<= {100 * cfg['max_loss']:g} pt with probability >= {1 - cfg['delta']:g}.")
        lines.append("")
    lines += ["| backend | policy | accuracy | mean steps | x OCT | loss vs T (pt) | speed-up | ops saved "
              "| certified |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, e in results["backends"].items():
        mean_oct = e["oct"]["mean_steps"]
        rows = [("all T steps (SNN accuracy)", {"accuracy": e["snn_accuracy"], "mean_steps": cfg["T"],
                                                  "over_oct": cfg["T"] / mean_oct, "loss_vs_T": 0.0,
                                                  "speedup": 1.0, "ops_saved": 0.0})]
        rows.append(("OCT (oracle)", {**e["oct"], "over_oct": 1.0, "loss_vs_T": 0.0}))
        rows += list(e["policies"].items())
        for pol, r in rows:
            lines.append(f"| {name} | {pol} | {_pct(r['accuracy'])} | {r['mean_steps']:.2f} | "
                         f"{r.get('over_oct', float('nan')):.2f}x | {r.get('loss_vs_T', float('nan')):+.2f} | "
                         f"{r['speedup']:.2f}x | {_pct(r.get('ops_saved'))} | {_certified(r)} |")
    classes = (data or {}).get("classes")
    for name, e in results["backends"].items():
        if classes and e["snn_accuracy"] <= 1.5 / classes:
            lines += ["", f"warning: {name}'s SNN is at chance level ({_pct(e['snn_accuracy'])} for {classes} "
                          "classes): its cutoff figures, certified ones included, say nothing; train longer "
                          "(--epochs) or check the data"]
    lines += conversion_table(results)
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


def conversion_table(results: dict) -> list[str]:
    """Conversion fidelity per backend: accuracies, per-layer error, warnings (empty without an ANN)."""
    reports = {n: e["conversion"] for n, e in results["backends"].items() if e.get("conversion")}
    if not reports:
        return []
    lines = ["", "| backend | ANN | SNN at T | best step (accuracy) | conversion error per layer (path: mean abs) |",
             "|---|---:|---:|---:|---|"]
    for name, r in reports.items():
        errors = ", ".join(f"{d['path']}: {d['error']:.3g}" for d in r["layers"])
        lines.append(f"| {name} | {_pct(r['ann_accuracy'])} | {_pct(r['snn_accuracy'])} | {r['best_step']} "
                     f"({_pct(r['best_accuracy'])}) | {errors} |")
    warned = [f"WARNING ({name}): {w}" for name, r in reports.items() for w in r["warnings"]]
    return lines + ([""] + warned if warned else [])


def sweep_table(results: dict) -> str:
    """One table per backend: the Pareto-optimal points of each policy family."""
    from .policies import pareto_front

    lines = []
    for name, families in results["backends"].items():
        lines += [f"## {name}", "", "| policy | value | accuracy | mean steps | speed-up |", "|---|---|---:|---:|---:|"]
        for family, points in families.items():
            for p in pareto_front(points):
                lines.append(f"| {family} | {p['policy']} | {_pct(p['accuracy'])} | {p['mean_steps']:.2f} | "
                             f"{p['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)
