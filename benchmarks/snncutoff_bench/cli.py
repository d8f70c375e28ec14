"""``snncutoff-bench``: thin click commands over the snncutoff library.

Each command parses options, calls library functions that do the work, and formats
their results (a Markdown table on stdout, progress on stderr, JSON with ``--json``).
Bad input exits with status 1 and a one-line message (``--debug`` shows the traceback).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from datetime import datetime
from pathlib import Path

import click

from snncutoff.data import DATASETS
from snncutoff.io import atomic_write_json
from snncutoff.models import MODELS

from .config import POLICIES, BenchConfig, BenchInputError


class BenchError(click.ClickException):
    """A user-facing error: printed as one line, exit status 1."""


def handle_errors(fn):
    """Turn library exceptions into one-line click errors unless ``--debug`` is set (before the
    command or after it); a SIGTERM stops the command as Ctrl-C does (its clean-up runs)."""

    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, **kwargs):
        ctx = click.get_current_context()
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
        _created.clear()
        done = False
        try:
            result = fn(*args, **kwargs)
            done = True
            return result
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, as SIGTERM gets 143
            click.echo("interrupted", err=True)
            raise SystemExit(130) from None
        except Exception as exc:  # noqa: BLE001 - the point is to format any failure
            if debug or ctx.find_root().params.get("debug"):
                traceback.print_exc()
            raise BenchError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if not done:  # a failed or stopped command leaves no empty folder of its own making
                for folder in reversed(_created):
                    try:
                        folder.rmdir()
                    except OSError:
                        pass  # not empty (or gone): left as it is
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    return click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")(wrapper)


_created: list[Path] = []  # folders the running command made, parents first (see handle_errors)


def _make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``, remembering which folders it made."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    _created.extend(reversed(missing))


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="snncutoff")
def main(debug: bool) -> None:
    """Benchmark cutoff (early exit) of spiking neural networks across SpikingJelly and snnTorch."""


def _split_csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _output_dir(path: str | None, command: str, kind: str | None = None) -> Path:
    """The run's output folder, created now (so an unwritable place fails before any work).

    Without ``--output-dir``: ``./snncutoff-results/<command>-<timestamp>-<pid>[-k]``, created
    exclusively, so two runs started in the same second never share (or read) one. A given
    folder holding another command's results (results.json of another ``kind`` of run, default
    ``command``) is refused: its files would be overwritten."""
    if path:
        out = Path(path)
        _writable(out, "--output-dir")
        _refuse_others(out, kind or command)
        return out
    base = Path("snncutoff-results") / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    _writable(base.parent, "the results folder")
    for k in range(1000):
        out = base if k == 0 else base.with_name(f"{base.name}-{k}")
        try:
            out.mkdir()
            _created.append(out)
            return out
        except FileExistsError:
            continue
    raise BenchError(f"cannot create a fresh folder next to {base}")


def _refuse_others(out: Path, kind: str) -> None:
    """A ``BenchError`` when ``out/results.json`` is the result of another kind of run than ``kind``."""
    f = out / "results.json"
    try:
        schema = json.loads(f.read_text()).get("schema", "") if f.is_file() else ""
    except (OSError, ValueError, AttributeError):
        return  # not one of ours: the run replaces it as it would any results.json
    other = schema.split("/")[1] if isinstance(schema, str) and schema.count("/") == 2 else None
    if other and other != kind:
        raise BenchError(f"--output-dir {out} holds the results of a `{other}` run ({f}), which this `{kind}` run "
                         "would overwrite; pass another folder, or delete that run's files first")


def _writable(folder: Path, what: str) -> None:
    """Create ``folder`` and check a file can be written in it, or fail with a one-line error."""
    try:
        _make_folder(folder)
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
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="Random seed."),
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
    from .config import BenchConfig

    kw["backends"] = _split_csv(kw.get("backends"))
    if "policies" in kw:
        kw["policies"] = _split_csv(kw["policies"]) or POLICIES
    return BenchConfig(**kw)


def _publish(stage: Path, out: Path) -> None:
    """Move a finished run's files from its staging folder ``stage`` into ``out``.

    The list of the new run's files is written first (``stage/.publish.json``), so a move
    stopped midway is completed by the next run into ``out`` (:func:`_recover`). The previous
    run's results.json goes first and the new one comes last, and the previous run's trace
    files (``traces/<backend>-<part>.pt``) are removed, so ``out`` never holds a results.json
    beside another run's files. Until this point (a run stopped early) ``out`` keeps the
    previous run as it was."""
    files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file() and p.name != "results.json")
    atomic_write_json(files, stage / ".publish.json")
    _complete(stage, out, files)


def _complete(stage: Path, out: Path, files: list[str]) -> None:
    """:func:`_publish` from wherever it stopped: every step can be repeated."""
    from snncutoff import backends

    if (stage / "results.json").exists():  # (else the new one is in place already)
        (out / "results.json").unlink(missing_ok=True)
    for name in backends.names():  # the previous run's traces (any other file in the folder is left alone)
        for part in ("train", "calibration", "test"):
            if f"traces/{name}-{part}.pt" not in files:
                (out / "traces" / f"{name}-{part}.pt").unlink(missing_ok=True)
    for rel in files:
        if (stage / rel).exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, out / rel)
    if (stage / "results.json").exists():
        os.replace(stage / "results.json", out / "results.json")
    shutil.rmtree(stage)


def _recover(out: Path) -> None:
    """Staging folders in ``out`` of runs no longer running: a publish they began is completed,
    the files of a run stopped before it are removed."""
    for stage in out.glob(".incomplete-*"):
        parts = stage.name.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if not stage.is_dir() or pid is None or _running(pid):
            continue
        try:
            files = json.loads((stage / ".publish.json").read_text())
        except (OSError, ValueError):
            shutil.rmtree(stage, ignore_errors=True)
            continue
        _complete(stage, out, files)


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish(results: dict, out: Path, as_json: bool, table: str, quiet: bool, stage: Path | None = None) -> None:
    """Write results.json (into ``stage``, then every file moved into ``out``: :func:`_publish`) and print."""
    from .pipeline import write_results

    write_results(results, stage or out)
    if stage is not None:
        _publish(stage, out)
    path = out / "results.json"
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(table)
    if not quiet:
        click.echo(f"results: {path}", err=True)


def _compare(cfg: BenchConfig, output_dir: str | None, quiet: bool, as_json: bool, name: str) -> None:
    from snncutoff.train import distributed_init

    from . import plots
    from .ann import cache_dir
    from .pipeline import run_compare
    from .report import compare_table

    try:
        from .config import check_config

        check_config(cfg)
    except BenchInputError as exc:
        raise BenchError(str(exc)) from exc
    rank, world = distributed_init(cfg.device)  # under torchrun: every process runs, rank 0 writes
    if world > 1 and not output_dir:
        raise BenchError("under torchrun, pass --output-dir (every process must agree on it; rank 0 writes)")
    out = _output_dir(output_dir, name, "compare") if rank == 0 else Path(output_dir)
    if not cfg.extra.get("checkpoint") and rank == 0:
        _writable(cache_dir(cfg), "--cache-dir")
    # the run writes into a staging folder inside out, moved into place once complete: a run stopped
    # early leaves a folder used before as it was (and its own files in .incomplete-<random>)
    if rank == 0:
        _recover(out)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=f".incomplete-{os.getpid()}-")) if rank == 0 else out
    try:
        results, traces = run_compare(cfg, stage, quiet=quiet or rank != 0, command=_command_line(),
                                      write=rank == 0)
        if rank != 0:
            return
        curves = {n: {fam: [(p["mean_steps"], p["accuracy"]) for p in pts] for fam, pts in e["sweep"].items()}
                  for n, e in results["backends"].items()}
        results["plots"] = [
            str(out / plots.accuracy_per_step(results, stage / "accuracy_per_step.png").name),
            str(out / plots.oct_histogram({n: t["test"] for n, t in traces.items()}, stage / "oct_histogram.png").name),
            str(out / plots.pareto(curves, stage / "pareto.png").name)]
        _finish(results, out, as_json, compare_table(results), quiet, stage)
    except BaseException as exc:
        if rank == 0 and (stage / ".publish.json").exists():  # stopped while moving its files: finish
            try:
                _complete(stage, out, json.loads((stage / ".publish.json").read_text()))
            except BaseException:  # noqa: BLE001 - left for the next run into out to complete (_recover)
                pass
        elif rank == 0:
            shutil.rmtree(stage, ignore_errors=True)  # a failed run's partial files
        if isinstance(exc, BenchInputError):
            raise BenchError(str(exc)) from exc
        raise


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
    from .config import check_holdout

    cfg = _config(**kw)
    try:
        check_holdout(cfg, checkpoint)
    except BenchInputError as exc:
        raise BenchError(str(exc)) from exc
    cfg.extra["checkpoint"] = checkpoint
    _compare(cfg, output_dir, quiet, as_json, "evaluate")


from . import model_commands, perf_commands  # noqa: E402,F401 - register train, convert, sweep, speed, ...

if __name__ == "__main__":  # pragma: no cover - ``python -m snncutoff_bench.cli``: the commands live on the
    from snncutoff_bench.cli import main as _main  # package module's group, not on this __main__ copy's

    sys.exit(_main())
