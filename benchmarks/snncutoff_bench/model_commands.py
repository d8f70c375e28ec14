"""``train``, ``convert`` and ``sweep``: the commands around a checkpoint or stored traces."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import click

from snncutoff import LIF, Trace, backends
from snncutoff.io import atomic_torch_save

from .cli import (
    BenchError,
    _command_line,
    _config,
    _finish,
    _output_dir,
    _split_csv,
    bench_options,
    handle_errors,
    main,
)
from .config import POLICIES, BenchInputError, holdout_record, load_split


@main.command()
@bench_options
@click.option("--route", default="convert", show_default=True, help="convert (QCFS ANN) or direct (SNN).")
@click.option("--levels", default=8, show_default=True, type=click.IntRange(min=1), help="QCFS quantisation levels L.")
@click.option("--lr", default=None, type=click.FloatRange(min=0.0, min_open=True), help="Learning rate.")
@click.option("--rcs-alpha", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Weight of the RCS regulariser (0: off).")
@click.option("--calibration-size", default=0.35, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="Training samples held out for calibrating cutoff rules later (as compare / evaluate do).")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its last.pt.")
@handle_errors
def train(output_dir, quiet, as_json, resume, **kw) -> None:
    """Train the QCFS ANN (route convert) or one SNN per backend (route direct); write checkpoints.

    The calibration samples (``--calibration-size``, seeded) are held out of training, as
    ``compare`` does, so ``evaluate --checkpoint`` calibrates on data the network never saw."""
    from snncutoff.train import Trainer

    from .ann import build_ann
    from .config import check_config

    if resume and not output_dir:
        raise BenchError("--resume continues the run in --output-dir: pass the folder of that run")
    cfg = _config(**kw)
    try:
        names = check_config(cfg)
    except BenchInputError as exc:
        raise BenchError(str(exc)) from exc
    out = _output_dir(output_dir, "train")
    runs = [out / "last.pt"] if cfg.route == "convert" else [out / n / "last.pt" for n in names]
    if resume and not any(p.is_file() for p in runs):  # a mistyped folder would silently start over
        raise BenchError(f"--resume: {out} holds no run to continue ({runs[0]} is missing); check the folder, "
                         "or leave out --resume to start a new run")
    if not resume and any(p.is_file() for p in runs):  # a finished run would be trained over
        raise BenchError(f"{out} holds a training run ({next(p for p in runs if p.is_file())}): pass --resume to "
                         "continue it, or another --output-dir to start a new one")
    split = load_split(cfg)
    loaders = split.loaders(cfg.batch_size, seed=cfg.seed)
    tc = cfg.train_config()
    tc.extra = holdout_record(cfg)
    results = {"schema": "snncutoff-bench/train/1", "command": _command_line(), "config": asdict(cfg), "runs": {}}
    targets = ["ann"] if cfg.route == "convert" else names
    init = build_ann(cfg, split)
    for target in targets:
        if target == "ann":
            net, backend, ckpt = init, None, out
        else:
            backend = backends.get(target)
            net = backend.convert(copy.deepcopy(init), spec=LIF(), step_mode=backend.preferred_step_mode)
            ckpt = out / target
        trainer = Trainer(net, tc, backend=backend, device=cfg.device, checkpoint_dir=ckpt, resume=resume,
                          progress=not quiet).fit(*loaders)
        results["runs"][target] = {"best_accuracy": trainer.best_accuracy_, "history": trainer.history_,
                                   "checkpoint": str(ckpt / "best.pt")}
    table = "| run | best test accuracy | checkpoint |\n|---|---:|---|\n" + "\n".join(
        f"| {k} | {100 * v['best_accuracy']:.2f}% | {v['checkpoint']} |" for k, v in results["runs"].items())
    _finish(results, out, as_json, table, quiet)


@main.command()
@bench_options
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="ANN checkpoint.")
@click.option("--step-mode", default="s", show_default=True, type=click.Choice(["s", "m"]),
              help="Step mode of the converted network, where the backend offers multi-step ('m').")
@handle_errors
def convert(output_dir, quiet, as_json, checkpoint, step_mode, **kw) -> None:
    """Convert an ANN checkpoint into every backend; report each layer's neuron, threshold and conversion
    error at T (mean |ANN activation - threshold x firing rate| on the test set), with the accuracies."""
    from snncutoff import data
    from snncutoff.fidelity import conversion_report
    from snncutoff.train import load_model

    from .ann import build_ann
    from .config import check_config

    cfg = _config(**kw)
    try:
        names = check_config(cfg)
    except BenchInputError as exc:
        raise BenchError(str(exc)) from exc
    split = data.load(cfg.dataset, cfg.data_dir, T=cfg.T, download=cfg.download)
    ann = load_model(build_ann(cfg, split), checkpoint).eval()
    out = _output_dir(output_dir, "convert")
    results = {"schema": "snncutoff-bench/convert/2", "command": _command_line(), "checkpoint": checkpoint,
               "T": cfg.T, "backends": {}}
    test = split.loader(split.test, cfg.batch_size)
    for name in names:
        b = backends.get(name)
        snn = b.convert(ann, step_mode=step_mode if step_mode in b.step_modes else "s")
        acts = [asdict(a) for a in snn.snncutoff_activations]
        atomic_torch_save({"state_dict": snn.state_dict(), "activations": acts}, out / f"snn-{name}.pt")
        report = conversion_report(b, ann, snn, test, cfg.T, warn=False) if not split.event else None
        results["backends"][name] = {"activations": acts, "network": repr(snn), "conversion": report}
    rows = ["| backend | layer | activation | threshold | v_init | conversion error at T |",
            "|---|---|---|---:|---:|---:|"]
    for name, e in results["backends"].items():
        errors = {d["path"]: f"{d['error']:.3g}" for d in (e["conversion"] or {}).get("layers", [])}
        rows += [f"| {name} | {a['path']} | {a['kind']} | {a['threshold']:.4g} | {a['v_init']} | "
                 f"{errors.get(a['path'], '–')} |" for a in e["activations"]]
    from .report import conversion_table

    _finish(results, out, as_json, "\n".join(rows + conversion_table(results)), quiet)


@main.command()
@click.option("--traces", "traces_dir", required=True, type=click.Path(file_okay=False),
              help="A traces/ folder written by compare or evaluate (<backend>-calibration.pt, <backend>-test.pt).")
@click.option("--policies", default=",".join(POLICIES), show_default=True, help="Comma-separated cutoff rules.")
@click.option("--epsilons", default=None, help="Comma-separated epsilons (topk, confidence, entropy, learned).")
@click.option("--alphas", default=None, help="Comma-separated alphas (conformal).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def sweep(traces_dir, policies, epsilons, alphas, output_dir, quiet, as_json) -> None:
    """Parameter sweeps from stored traces: accuracy vs mean exit step, Pareto curves (no network run).

    Rules are calibrated on <backend>-calibration.pt (held out from training by compare /
    evaluate), or on <backend>-train.pt in folders written before it existed."""
    from . import plots
    from .policies import sweep_results
    from .report import sweep_table

    fams = _split_csv(policies) or POLICIES
    for f in fams:
        if f not in POLICIES:
            raise BenchError(f"unknown policy {f!r}; choose from {', '.join(POLICIES)}")
    values = {}
    for param, text in (("epsilon", epsilons), ("alpha", alphas)):
        try:
            values[param] = tuple(float(v) for v in _split_csv(text))
        except ValueError:
            raise BenchError(f"--{param}s must be comma-separated numbers, got {text!r}") from None
        for v in values[param]:
            if not 0.0 <= v < 1.0:
                raise BenchError(f"every {param} must lie in [0, 1), got {v}")
    folder = Path(traces_dir)
    if not folder.is_dir():
        raise BenchError(f"--traces {folder} is not a folder")
    tests = sorted(folder.glob("*-test.pt"))
    if not tests:
        raise BenchError(f"no <backend>-test.pt trace in {folder}; run `snncutoff-bench compare` first")
    out = _output_dir(output_dir, "sweep")
    results = {"schema": "snncutoff-bench/sweep/2", "command": _command_line(), "traces": str(folder), "backends": {}}
    curves = {}
    for test_path in tests:
        name = test_path.name[: -len("-test.pt")]
        cal_path = next((p for p in (folder / f"{name}-calibration.pt", folder / f"{name}-train.pt") if p.exists()),
                        None)
        if cal_path is None:
            raise BenchError(f"{folder / (name + '-calibration.pt')} is missing: rules are calibrated on it")
        results.setdefault("calibration", {})[name] = cal_path.name
        if cal_path.name.endswith("-train.pt"):
            note = (f"{name}: no {name}-calibration.pt in {folder}, so the rules are calibrated on {cal_path.name}, "
                    "samples the network was trained on: exits are optimistic and no certified bound holds (run "
                    "compare again to write a held-out calibration trace)")
            results.setdefault("warnings", []).append(note)
            click.echo(f"warning: {note}", err=True)
        sw = sweep_results(Trace.load(cal_path), Trace.load(test_path), fams, values)
        results["backends"][name] = sw
        curves[name] = {fam: [(p["mean_steps"], p["accuracy"]) for p in pts] for fam, pts in sw.items()}
    results["plots"] = [str(plots.pareto(curves, out / "pareto.png"))]
    _finish(results, out, as_json, sweep_table(results), quiet)
