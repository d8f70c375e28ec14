"""``snncutoff-bench``: thin click commands over the snncutoff library.

Each command parses options, calls library functions that do the work, and formats
their results (a Markdown table on stdout, progress on stderr, JSON with ``--json``).
Bad input exits with status 1 and a one-line message (``--debug`` shows the traceback).
"""

from __future__ import annotations

import functools
import json
import sys
import traceback

import click


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


@main.command("core-speed")
@click.option("--T", "T", default=64, show_default=True, help="Timesteps of the synthetic traces.")
@click.option("--N", "N", default=50_000, show_default=True, help="Samples per trace.")
@click.option("--C", "C", default=100, show_default=True, help="Classes.")
@click.option("--repeats", default=3, show_default=True, help="Best of this many runs.")
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
