"""``speed``, ``core-speed`` and ``info``: the performance and environment commands of snncutoff-bench."""

from __future__ import annotations

import json

import click

from snncutoff.validation import check_device

from .cli import BenchError, _command_line, _finish, _output_dir, _split_csv, handle_errors, main


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
@click.option("--dataset", default="digits", show_default=True,
              help="--early-exit: the data the network is trained and timed on (a name or a .npz file).")
@click.option("--input-size", default=None, type=click.IntRange(min=1),
              help="--early-exit: resize the images to this side (default: what the model needs, e.g. 32 for VGG).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="--early-exit: training epochs of the network (default: as compare).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def speed(model, batch_size, T, backends, device, repeats, early_exit, epsilon, block, stream_repeats, gpu_kernel,
          cache_dir, dataset, input_size, epochs, output_dir, quiet, as_json) -> None:
    """Per backend: native loop vs adapter step loop vs run (multi-step), or real early exit (ratios, one run)."""
    from . import speed as sp

    names = list(_split_csv(backends)) or None
    try:
        check_device(device)
    except ValueError as exc:
        raise BenchError(f"--device: {exc}") from None
    out = _output_dir(output_dir, "speed")
    if early_exit:
        from snncutoff.models import MIN_INPUT

        from .ann import trained_ann
        from .config import BenchConfig, load_split

        probe = load_split(BenchConfig(dataset=dataset)) if input_size is None else None
        size = input_size if input_size is not None else max(MIN_INPUT[model], probe.input_size)
        cfg = BenchConfig(T=T, cache_dir=cache_dir, model=model, dataset=dataset, epochs=epochs, device=device,
                          input_size=size if probe is None or size != probe.input_size else None)
        split = load_split(cfg)
        ann, _ = trained_ann(cfg, split, quiet)
        cal = split.loader(split.calibration, batch_size)
        test = split.loader(split.test, batch_size)
        results = sp.early_exit_speed(batch_size, T, epsilon, "topk", names, device, repeats, ann, (cal, test),
                                      block, stream_repeats, progress=not quiet)
        results.update(model=model, dataset=dataset, input_size=size)
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
@click.option("--decision-batch", default=256, show_default=True, type=click.IntRange(min=1),
              help="Batch of the on-line decision timings (each rule's exit_now on one step, vs TopKGap's).")
@click.option("--decision-calls", default=200, show_default=True, type=click.IntRange(min=1),
              help="Decisions per timed run of each rule.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def core_speed(T: int, N: int, C: int, repeats: int, decision_batch: int, decision_calls: int,
               as_json: bool) -> None:
    """Top-K calibration speed: snncutoff vs a per-threshold Python loop; each rule's on-line decision
    cost against TopKGap's (ratios from one run)."""
    from .core_speed import decision_costs, measure

    click.echo(f"synthetic traces T={T} N={N} C={C}: {2 * T * N * C * 4 / 1e9:.2f} GB", err=True)
    d = measure(T, N, C, repeats=repeats).to_dict()
    d["decisions"] = decision_costs(decision_batch, C, T, repeats=max(repeats, 3), calls=decision_calls)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    rows = [
        ("loop baseline (grid, topk)", d["baseline_s"], 1.0),
        ("Trace(outputs, labels): construction and validation", d["construct_s"], d["baseline_s"] / d["construct_s"]),
        ("both traces constructed, then TopKGap exact fit+evaluate", d["exact_with_construction_s"],
         d["exact_with_construction_speedup"]),
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
    click.echo(f"\n| on-line decision, one step of {decision_batch} samples | us | vs TopKGap |\n|---|---:|---:|")
    for name, e in d["decisions"].items():
        click.echo(f"| {name} | {e['us_per_decision']:.1f} | {e['over_topk']:.2f}x |")
    if not d["native_kernel"]:
        click.echo("(the optional C kernels are not in use (not built, or SNNCUTOFF_NATIVE=0): pure-torch gaps, "
                   "about 3x slower on new traces, and LearnedExit decisions about 1.5x slower; reinstall with a C "
                   "compiler present)")


@main.command()
@click.option("--T", "T", default=32, show_default=True, type=click.IntRange(min=1), help="Timesteps.")
@click.option("--N", "N", default=50_000, show_default=True, type=click.IntRange(min=1), help="Samples.")
@click.option("--C", "C", default=1000, show_default=True, type=click.IntRange(min=2), help="Classes.")
@click.option("--variants", default="memory,mmap,summary,reference", show_default=True,
              help="Comma-separated: memory (outputs in memory), mmap (Trace.load(mmap=True)), summary, reference "
                   "(TopKGap on the T=64 N=50000 C=100 trace, the baseline of its time per element).")
@click.option("--folder", type=click.Path(file_okay=False), default="snncutoff-results/memory", show_default=True,
              help="Where the trace of the mmap variant is written (T x N x C x 4 bytes).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def memory(T: int, N: int, C: int, variants: str, folder: str, as_json: bool) -> None:
    """Peak resident memory of a large trace's analyses (OCT, TopKGap, Conformal, Confidence), per variant."""
    from pathlib import Path

    from .memory import measure

    chosen = tuple(_split_csv(variants))
    known = ("memory", "mmap", "summary", "reference")
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise BenchError(f"--variants: unknown {', '.join(map(repr, unknown)) or 'empty list'}; choose from "
                         f"{', '.join(known)}")
    click.echo(f"synthetic trace T={T} N={N} C={C}: {T * N * C * 4 / 1e9:.2f} GB", err=True)
    d = measure(T, N, C, Path(folder), chosen)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo("| variant | peak RSS / trace bytes | load or construct s | analyses s | TopKGap ns / element |\n"
               "|---|---:|---:|---:|---:|")
    for name, r in d["variants"].items():
        if "error" in r:
            click.echo(f"| {name} | failed: {r['error']} | | | |")
        else:
            click.echo(f"| {name} | {r['peak_over_trace']:.2f}x | {r['load_or_construct_s']:.2f} | "
                       f"{r['analyses_s']:.2f} | {r['topk_ns_per_element']:.2f} |")
    ref = d["variants"].get("reference", {}).get("topk_ns_per_element")
    if ref:
        for name, r in d["variants"].items():
            if name != "reference" and "topk_ns_per_element" in r:
                click.echo(f"TopKGap time per element, {name}: {r['topk_ns_per_element'] / ref:.2f}x the "
                           "T=64 N=50000 C=100 reference")
    if "summary_bytes_per_sample_step" in d["variants"].get("summary", {}):
        click.echo(f"\nsummary: {d['variants']['summary']['summary_bytes_per_sample_step']:.0f} bytes per sample "
                   f"and step, against {4 * C} for the outputs")


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
