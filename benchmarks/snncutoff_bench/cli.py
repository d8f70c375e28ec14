"""``snncutoff-bench``: thin click commands over the snncutoff library.

Each command parses options, calls library functions that do the work, and formats
their results (a Markdown table on stdout, progress on stderr, JSON with ``--json``).
Bad input exits with status 1 and a one-line message (``--debug`` shows the traceback).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import tempfile
import traceback
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click

from snncutoff import LIF, Trace, backends
from snncutoff.data import DATASETS
from snncutoff.io import atomic_torch_save
from snncutoff.models import MODELS
from snncutoff.validation import check_device

from .pipeline import POLICIES, BenchConfig, BenchInputError


class BenchError(click.ClickException):
    """A user-facing error: printed as one line, exit status 1."""


def handle_errors(fn):
    """Turn library exceptions into one-line click errors unless ``--debug`` is set."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the point is to format any failure
            if ctx.find_root().params.get("debug"):
                traceback.print_exc()
            raise BenchError(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="snncutoff")
def main(debug: bool) -> None:
    """Benchmark cutoff (early exit) of spiking neural networks across SpikingJelly and snnTorch."""


def _split_csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _output_dir(path: str | None, command: str) -> Path:
    """The run's output folder, created now (so an unwritable place fails before any work).

    Without ``--output-dir``: ``./snncutoff-results/<command>-<timestamp>-<pid>[-k]``, created
    exclusively, so two runs started in the same second never share (or read) one."""
    if path:
        out = Path(path)
        _writable(out, "--output-dir")
        return out
    base = Path("snncutoff-results") / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    _writable(base.parent, "the results folder")
    for k in range(1000):
        out = base if k == 0 else base.with_name(f"{base.name}-{k}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise BenchError(f"cannot create a fresh folder next to {base}")


def _writable(folder: Path, what: str) -> None:
    """Create ``folder`` and check a file can be written in it, or fail with a one-line error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise BenchError(f"{what} {folder} is not writable: {exc.strerror or exc}") from None


def _command_line() -> str:
    return " ".join(["snncutoff-bench", *sys.argv[1:]])


def bench_options(fn):
    """Options shared by the commands that build networks."""
    opts = [
        click.option("--dataset", default="digits", show_default=True,
                     help=f"Data set: {', '.join(DATASETS)}, or a .npz file holding x [N, H, W] (or [N, C, H, W]) "
                          "images and y [N] labels (seeded 80 / 20 split)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder holding the real data sets (not needed for digits)."),
        click.option("--download", is_flag=True, help="Let torchvision / SpikingJelly download the data set."),
        click.option("--model", default="cnn", show_default=True, help=f"Model: {', '.join(MODELS)}."),
        click.option("--T", "T", default=32, show_default=True, type=click.IntRange(min=1), help="Timesteps."),
        click.option("--backends", default=None, help="Comma-separated backends (default: every installed one)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed."),
        click.option("--epochs", default=None, type=click.IntRange(min=1),
                     help="Training epochs (default: per data set and route)."),
        click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1)),
        click.option("--output-dir", type=click.Path(file_okay=False), default=None,
                     help="Where results go (default ./snncutoff-results/<command>-<timestamp>/)."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Trained-ANN cache (default ~/.cache/snncutoff)."),
        click.option("--quiet", is_flag=True, help="No progress output on stderr."),
        click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout instead of the table."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def risk_options(fn):
    """Options of the held-out calibration and the risk-controlled rules."""
    opts = [
        click.option("--calibration-size", default=0.35, show_default=True, type=click.FloatRange(min=0.0,
                     min_open=True), help="Samples held out from the training data before training, to calibrate "
                                          "the cutoff rules on: a fraction, or a count (>= 1)."),
        click.option("--max-loss", default=0.005, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True,
                     max_open=True), help="Risk control: accuracy (0-1) a certified rule may give up against all T "
                                          "steps."),
        click.option("--delta", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True,
                     max_open=True), help="Risk control: probability that the certified bound fails."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _config(**kw) -> BenchConfig:
    from .pipeline import BenchConfig

    kw["backends"] = _split_csv(kw.get("backends"))
    if "policies" in kw:
        kw["policies"] = _split_csv(kw["policies"]) or POLICIES
    return BenchConfig(**kw)


def _finish(results: dict, out: Path, as_json: bool, table: str, quiet: bool) -> None:
    from .pipeline import write_results

    path = write_results(results, out)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(table)
    if not quiet:
        click.echo(f"results: {path}", err=True)


def _compare(cfg: BenchConfig, output_dir: str | None, quiet: bool, as_json: bool, name: str) -> None:
    from . import plots
    from .pipeline import cache_dir, run_compare
    from .report import compare_table

    try:
        from .pipeline import check_config

        check_config(cfg)
    except BenchInputError as exc:
        raise BenchError(str(exc)) from exc
    out = _output_dir(output_dir, name)
    if not cfg.extra.get("checkpoint"):
        _writable(cache_dir(cfg), "--cache-dir")
    try:
        results, traces = run_compare(cfg, out, quiet=quiet, command=_command_line())
    except BenchInputError as exc:
        raise BenchError(str(exc)) from exc
    curves = {n: {fam: [(p["mean_steps"], p["accuracy"]) for p in pts] for fam, pts in e["sweep"].items()}
              for n, e in results["backends"].items()}
    results["plots"] = [str(plots.accuracy_per_step(results, out / "accuracy_per_step.png")),
                        str(plots.oct_histogram({n: t["test"] for n, t in traces.items()}, out / "oct_histogram.png")),
                        str(plots.pareto(curves, out / "pareto.png"))]
    _finish(results, out, as_json, compare_table(results), quiet)


@main.command()
@bench_options
@click.option("--route", default="convert", show_default=True,
              help="convert: one QCFS ANN converted into every backend; direct: one SNN per backend trained "
                   "with that framework's LIF neurons from the same initial weights.")
@click.option("--policies", default=",".join(POLICIES), show_default=True, help="Comma-separated cutoff rules.")
@click.option("--levels", default=8, show_default=True, type=click.IntRange(min=1),
              help="QCFS quantisation levels L (convert route).")
@click.option("--rcs-alpha", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Weight of the RCS regulariser in training (0: off).")
@click.option("--encoder", default="direct", show_default=True, type=click.Choice(["direct", "rate", "poisson",
              "latency"]), help="Input coding of the converted network: direct (the image every step), rate "
                                "(snnTorch spikegen.rate), poisson (SpikingJelly PoissonEncoder) or latency "
                                "(snnTorch spikegen.latency); seeded.")
@risk_options
@handle_errors
def compare(output_dir, quiet, as_json, **kw) -> None:
    """The main job: train (or reuse) a network, run it in every backend, compare cutoff efficiency.

    With no options: a QCFS CNN on the embedded digits data, T = 32, every installed
    backend; writes results.json, traces/*.pt and PNG plots, and prints a Markdown table.
    """
    _compare(_config(**kw), output_dir, quiet, as_json, "compare")


@main.command()
@bench_options
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="ANN checkpoint written by `snncutoff-bench train` (or a Trainer).")
@click.option("--policies", default=",".join(POLICIES), show_default=True, help="Comma-separated cutoff rules.")
@risk_options
@handle_errors
def evaluate(output_dir, quiet, as_json, checkpoint, **kw) -> None:
    """Checkpoint -> SNN per backend -> traces -> every policy (like compare, without training)."""
    cfg = _config(**kw)
    cfg.extra["checkpoint"] = checkpoint
    _compare(cfg, output_dir, quiet, as_json, "evaluate")


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
    from snncutoff import data
    from snncutoff.train import Trainer

    from .pipeline import build_ann, check_config

    if resume and not output_dir:
        raise BenchError("--resume continues the run in --output-dir: pass the folder of that run")
    cfg = _config(**kw)
    try:
        names = check_config(cfg)
    except BenchInputError as exc:
        raise BenchError(str(exc)) from exc
    out = _output_dir(output_dir, "train")
    split = data.load(cfg.dataset, cfg.data_dir, T=cfg.T, download=cfg.download)
    split = split.holdout(int(cfg.calibration_size) if cfg.calibration_size >= 1 else cfg.calibration_size, cfg.seed)
    loaders = split.loaders(cfg.batch_size, seed=cfg.seed)
    tc = cfg.train_config()
    tc.extra = {"dataset": cfg.dataset, "model": cfg.model, "calibration_size": cfg.calibration_size,
                "seed": cfg.seed}
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

    from .pipeline import build_ann, check_config

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
    from .pipeline import sweep_results
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
        sw = sweep_results(Trace.load(cal_path), Trace.load(test_path), fams, values)
        results["backends"][name] = sw
        curves[name] = {fam: [(p["mean_steps"], p["accuracy"]) for p in pts] for fam, pts in sw.items()}
    results["plots"] = [str(plots.pareto(curves, out / "pareto.png"))]
    _finish(results, out, as_json, sweep_table(results), quiet)


def _block_option(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"must be 'auto' or an integer >= 1, got {value!r}")
    return int(value)


@main.command()
@click.option("--model", default="cnn", show_default=True, help="cnn (digits size) or vgg11 / vgg16 (CIFAR size).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--T", "T", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--backends", default=None, help="Comma-separated backends (default: every installed one).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--early-exit", is_flag=True,
              help="Time streaming early exit vs all T steps (digits CNN, QCFS) next to T / mean exit step.")
@click.option("--epsilon", default=0.0, show_default=True, type=float,
              help="TopKGap epsilon of --early-exit (the overhead when nothing exits is timed with Confidence(0)).")
@click.option("--block", default="auto", show_default=True, callback=_block_option,
              help="Steps between decisions of --early-exit: 'auto' or an integer (1: decide after every step).")
@click.option("--stream-repeats", default=16, show_default=True, type=click.IntRange(min=1),
              help="Long stream of --early-exit: the test set this many times over, with refill.")
@click.option("--gpu-kernel", default=None, type=click.Choice(["auto", "cupy", "triton", "torch"]),
              help="SpikingJelly kernel family (0.0.0.0.14: cupy/torch; 2.x: auto/triton/torch).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Trained-ANN cache for --early-exit (default ~/.cache/snncutoff).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def speed(model, batch_size, T, backends, device, repeats, early_exit, epsilon, block, stream_repeats, gpu_kernel,
          cache_dir, output_dir, quiet, as_json) -> None:
    """Per backend: native loop vs adapter step loop vs run (multi-step), or real early exit (ratios, one run)."""
    from . import speed as sp

    names = list(_split_csv(backends)) or None
    try:
        check_device(device)
    except ValueError as exc:
        raise BenchError(f"--device: {exc}") from None
    out = _output_dir(output_dir, "speed")
    if early_exit:
        from snncutoff import data

        from .pipeline import BenchConfig, trained_ann

        cfg = BenchConfig(T=T, cache_dir=cache_dir)
        split = data.digits()
        ann, _ = trained_ann(cfg, split, quiet)
        train, test = split.loaders(batch_size, shuffle_train=False)
        results = sp.early_exit_speed(batch_size, T, epsilon, "topk", names, device, repeats, ann, (train, test),
                                      block, stream_repeats)
        rows = ["| backend | all T steps s | early exit s | mean exit step | realised speed-up | ideal T/mean | "
                "realised / ideal | same, block=1 | network alone / ideal | decisions add | "
                "vs all T in one block | overhead, nothing exits: can't / decided | "
                "test set, refill: speed-up / ideal | "
                "long stream, refill: speed-up / ideal |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows += [f"| {n} | {e['full_seconds']:.4f} | {e['early_exit_seconds']:.4f} | {e['mean_exit_step']:.2f} | "
                 f"{e['realised_speedup']:.2f}x | {e['ideal_speedup']:.2f}x | {e['realised_over_ideal']:.2f} | "
                 f"{e['step_by_step_over_ideal']:.2f} | {e['network_bound_over_ideal']:.2f} | "
                 f"{100 * e['decision_overhead']:+.0f}% | {e['realised_speedup_vs_full_block']:.2f}x | "
                 f"{100 * e['no_exit_overhead']:+.1f}% / {100 * e['no_exit_decided_overhead']:+.1f}% | "
                 f"{e['loader_refill_speedup']:.2f}x / "
                 f"{e['loader_ideal_speedup']:.2f}x | {e['stream_refill_speedup']:.2f}x / "
                 f"{e['loader_ideal_speedup']:.2f}x ({e['stream_samples']} samples) |"
                 for n, e in results["backends"].items()]
    else:
        size, ch = (8, 1) if model == "cnn" else (32, 3)
        results = sp.backend_paths(model, size, ch, batch_size, T, names, device, repeats, gpu_kernel)
        rows = ["| backend | native ms/step | adapter step ms/step | adapter run ms/step | adapter overhead | "
                "run / step |", "|---|---:|---:|---:|---:|---:|"]
        rows += [f"| {n} | {e['native_ms_per_step']:.3f} | {e['step_ms_per_step']:.3f} | {e['run_ms_per_step']:.3f} | "
                 f"{100 * e['adapter_overhead']:+.1f}% | {e['run_over_step']:.2f} |"
                 for n, e in results["backends"].items()]
    results["command"] = _command_line()
    _finish(results, out, as_json, "\n".join(rows), quiet)


@main.command("core-speed")
@click.option("--T", "T", default=64, show_default=True, type=click.IntRange(min=1),
              help="Timesteps of the synthetic traces.")
@click.option("--N", "N", default=50_000, show_default=True, type=click.IntRange(min=1), help="Samples per trace.")
@click.option("--C", "C", default=100, show_default=True, type=click.IntRange(min=2), help="Classes.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Best of this many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def core_speed(T: int, N: int, C: int, repeats: int, as_json: bool) -> None:
    """Top-K calibration speed: snncutoff vs a per-threshold Python loop (ratios from one run)."""
    from .core_speed import measure

    click.echo(f"synthetic traces T={T} N={N} C={C}: {2 * T * N * C * 4 / 1e9:.2f} GB", err=True)
    d = measure(T, N, C, repeats=repeats).to_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    rows = [
        ("loop baseline (grid, topk)", d["baseline_s"], 1.0),
        ("TopKGap exact, fit+evaluate, new traces", d["exact_cold_s"], d["exact_cold_speedup"]),
        ("TopKGap exact, fit+evaluate, gaps cached", d["exact_warm_s"], d["exact_warm_speedup"]),
        ("TopKGap grid (bit-exact SNNCutoff), new traces", d["grid_cold_s"], d["grid_cold_speedup"]),
        (f"sweep over {d['sweep_values']} epsilons, new traces", d["sweep_cold_s"],
         d["baseline_s"] / d["sweep_cold_s"]),
    ]
    click.echo("| variant | seconds | speed-up vs loop |\n|---|---:|---:|")
    for name, sec, ratio in rows:
        click.echo(f"| {name} | {sec:.3f} | {ratio:.1f}x |")
    click.echo(f"\nsweep / single fit+evaluate: {d['sweep_over_single_fit_evaluate']:.2f}x")
    if not d["native_kernel"]:
        click.echo("(the optional C top-2 kernel is not in use (not built, or SNNCUTOFF_NATIVE=0): pure-torch gaps, "
                   "about 3x slower on new traces; reinstall with a C compiler present)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@handle_errors
def info(as_json: bool) -> None:
    """Versions of torch, the frameworks, cupy and CUDA, and which backends are usable."""
    from .environment import describe

    d = describe()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for key, value in d.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        else:
            click.echo(f"{key}: {value}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
