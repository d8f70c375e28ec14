"""snncutoff-bench through click's CliRunner, on tiny settings."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from snncutoff import backends
from snncutoff_bench.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One tiny compare run shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("compare")
    cache = tmp_path_factory.mktemp("cache")
    res = CliRunner().invoke(main, ["compare", "--epochs", "1", "--T", "4", "--output-dir", str(out),
                                    "--cache-dir", str(cache), "--quiet"])
    assert res.exit_code == 0, res.output
    return out, cache, res.output


def test_compare_writes_results_traces_and_plots(compared):
    out, _, stdout = compared
    assert "| backend | policy | accuracy |" in stdout and "OCT (oracle)" in stdout
    d = json.loads((out / "results.json").read_text())
    assert d["schema"] == "snncutoff-bench/compare/2" and d["seed"] == 0
    assert {"config", "command", "versions", "ann", "backends", "agreement", "plots", "data"} <= set(d)
    assert d["data"] == {"train": 876, "calibration": 471, "test": 450, "classes": 10}  # 35 % held out
    import copy

    from snncutoff_bench.report import compare_table  # an SNN at chance is said to be

    chance = copy.deepcopy(d)
    for e in chance["backends"].values():
        e["snn_accuracy"] = 0.9
    assert "chance level" not in compare_table(chance)
    name = next(iter(chance["backends"]))
    chance["backends"][name]["snn_accuracy"] = 0.1
    assert f"warning: {name}'s SNN is at chance level (10.00% for 10 classes)" in compare_table(chance)
    for name, e in d["backends"].items():
        assert name in backends.names()
        assert {"ann_accuracy", "snn_accuracy", "accuracy_per_step", "oct", "policies", "timing", "sweep"} <= set(e)
        assert len(e["accuracy_per_step"]) == 4
        for key, r in e["policies"].items():
            assert {"accuracy", "mean_steps", "speedup", "ops_saved", "over_oct", "loss_vs_T"} <= set(r), key
            assert r["over_oct"] == pytest.approx(r["mean_steps"] / e["oct"]["mean_steps"])
            assert r["loss_vs_T"] == pytest.approx(100 * (e["snn_accuracy"] - r["accuracy"]))
        assert "topk_epsilon0.01" in e["policies"]
        for family in ("timestep", "topk", "confidence", "entropy", "conformal", "stability", "learned"):
            risk = e["policies"][f"risk_{family}"]
            assert risk["delta"] == 0.1 and risk["n_calibration"] > 0
            assert risk["certified_loss"] == (0.005 if risk["value"] is not None else 0.0)
            assert set(e["sweep"][family][0]) >= {"accuracy", "mean_steps"}
        for part in ("train", "calibration", "test"):
            assert (out / "traces" / f"{name}-{part}.pt").exists()
    for png in d["plots"]:
        with open(png, "rb") as f:
            assert f.read(8) == PNG
    import matplotlib.image

    assert matplotlib.image.imread(d["plots"][0]).shape[2] in (3, 4)


def test_compare_reuses_the_cached_checkpoint(compared, tmp_path):
    _, cache, _ = compared
    res = CliRunner().invoke(main, ["compare", "--epochs", "1", "--T", "4", "--output-dir", str(tmp_path),
                                    "--cache-dir", str(cache), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    first = json.loads((compared[0] / "results.json").read_text())["ann"]
    assert d["ann"]["cached"] is True and first["cached"] is False
    for key in ("train_seconds", "history", "initial_thresholds"):  # recorded with the cache entry
        assert d["ann"][key] == first[key] and first[key]


def test_a_folder_used_again_holds_one_whole_run(compared, tmp_path, monkeypatch):
    """compare writes into <dir>/.incomplete-* and moves the files into place at the end: a run
    that stops early leaves the previous run as it was; a finished one leaves none of the previous
    run's files, and no file of the user's."""
    from snncutoff_bench import plots

    _, cache, _ = compared
    args = ["compare", "--epochs", "1", "--T", "4", "--output-dir", str(tmp_path), "--cache-dir", str(cache),
            "--quiet"]
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "my-own.pt").write_bytes(b"mine")  # not compare's: kept through every run
    assert CliRunner().invoke(main, args).exit_code == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert len({p for p in before if p.parts[0] == "traces"}) == 1 + 3 * len(json.loads(
        (tmp_path / "results.json").read_text())["backends"])

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "pareto", interrupted)  # stopped after its traces and first plots are written
    one = backends.names()[0]
    res = CliRunner().invoke(main, [*args, "--backends", one, "--seed", "1"])
    assert res.exit_code == 130  # the shell's status for Ctrl-C
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    assert CliRunner().invoke(main, [*args, "--backends", one, "--seed", "1"]).exit_code == 0
    d = json.loads((tmp_path / "results.json").read_text())
    assert list(d["backends"]) == [one] and d["seed"] == 1
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == sorted(
        [f"{one}-{part}.pt" for part in ("train", "calibration", "test")] + ["my-own.pt"])
    assert not list(tmp_path.glob(".incomplete-*"))
    assert all(str(tmp_path) in png and open(png, "rb").read(8) == PNG for png in d["plots"])

    import snncutoff_bench.cli as cli  # Ctrl-C while the finished run's files are moved in: the move is finished

    moves, real_replace = 0, os.replace

    def interrupted_move(src, dst):
        nonlocal moves
        real_replace(src, dst)
        if Path(dst).parent in (tmp_path, tmp_path / "traces"):  # a move into place
            moves += 1
            if moves == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(cli.os, "replace", interrupted_move)
    assert CliRunner().invoke(main, [*args, "--backends", one, "--seed", "2"]).exit_code != 0
    monkeypatch.undo()
    assert moves > 2 and json.loads((tmp_path / "results.json").read_text())["seed"] == 2
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == sorted(
        [f"{one}-{part}.pt" for part in ("train", "calibration", "test")] + ["my-own.pt"])
    assert not list(tmp_path.glob(".incomplete-*"))


def test_sweep_from_stored_traces(compared, tmp_path):
    out, _, _ = compared
    res = CliRunner().invoke(main, ["sweep", "--traces", str(out / "traces"), "--epsilons", "0,0.05",
                                    "--alphas", "0.1", "--output-dir", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "results.json").read_text())
    name = next(iter(d["backends"]))
    assert len(d["backends"][name]["topk"]) == 2 and len(d["backends"][name]["conformal"]) == 1
    assert (tmp_path / "pareto.png").read_bytes()[:8] == PNG
    assert d["calibration"][name] == f"{name}-calibration.pt" and "warnings" not in d

    import shutil  # a folder from before held-out calibration: the training trace, said loudly and recorded

    old = tmp_path / "old"
    old.mkdir()
    for part in ("train", "test"):
        shutil.copy(out / "traces" / f"{name}-{part}.pt", old)
    res = CliRunner().invoke(main, ["sweep", "--traces", str(old), "--output-dir", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "o" / "results.json").read_text())
    assert d["calibration"] == {name: f"{name}-train.pt"} and "trained on" in d["warnings"][0]
    assert "warning:" in res.stderr and "no certified bound holds" in res.stderr


def test_train_evaluate_convert(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--epochs", "1", "--output-dir", str(tmp_path / "tr"), "--quiet"])
    assert res.exit_code == 0, res.output
    ckpt = tmp_path / "tr" / "best.pt"
    assert ckpt.exists() and (tmp_path / "tr" / "last.pt").exists()
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--T", "4", "--output-dir",
                               str(tmp_path / "ev"), "--quiet", "--policies", "topk,timestep"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert d["ann"]["given"] is True and d["ann"]["cached"] is False and f"(checkpoint {ckpt})" in res.output
    assert all({k.removeprefix("risk_").split("_")[0] for k in e["policies"]} == {"topk", "timestep"}
               for e in d["backends"].values())
    res = runner.invoke(main, ["convert", "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "cv"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "| QCFS |" in res.output
    # a checkpoint trained for another model, or holding out other samples, is a clear error (its calibration
    # samples would include training samples: no certificate could hold)
    for args, says in ((["--model", "resnet20"], "--model 'cnn' (asked: 'resnet20')"),
                       (["--calibration-size", "0.5"], "--calibration-size 0.35 (asked: 0.5)"),
                       (["--seed", "3"], "--seed 0 (asked: 3)")):
        res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), *args, "--T", "2",
                                   "--output-dir", str(tmp_path / "bad")])
        assert res.exit_code == 1 and says in res.output and "Traceback" not in res.output, res.output
    # resuming with other settings names them; resuming from a folder with no run is refused
    res = runner.invoke(main, ["train", "--epochs", "1", "--levels", "2", "--output-dir", str(tmp_path / "tr"),
                               "--resume", "--quiet"])
    assert res.exit_code == 1 and "extra.levels: 8 in the checkpoint, 2 now" in res.output, res.output
    res = runner.invoke(main, ["train", "--epochs", "1", "--output-dir", str(tmp_path / "empty"), "--resume",
                               "--quiet"])
    assert res.exit_code == 1 and "holds no run to continue" in res.output, res.output
    assert not (tmp_path / "empty" / "last.pt").exists()


def test_compare_direct_route(tmp_path):
    res = CliRunner().invoke(main, ["compare", "--route", "direct", "--epochs", "1", "--T", "4",
                                    "--output-dir", str(tmp_path), "--quiet", "--json",
                                    "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["ann"] is None and all("history" in e for e in d["backends"].values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "imagenet"], "unknown data set 'imagenet'; choose one of digits, mnist"),
        (["--model", "alexnet"], "unknown model 'alexnet'; choose one of cnn"),
        (["--backends", "norse"], "unknown backend 'norse'; registered:"),
        (["--policies", "topk,oracle"], "unknown policy 'oracle'; choose from timestep"),
        (["--dataset", "mnist"], "pass --data-dir"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/x"], "does not exist"),
        (["--route", "sideways"], "unknown route"),
    ],
)
def test_bad_input_exits_1_with_one_line(args, message, tmp_path):
    res = CliRunner().invoke(main, ["compare", *args, "--output-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output


def test_missing_dataset_files_say_how_to_get_them(tmp_path, monkeypatch):
    res = CliRunner().invoke(main, ["compare", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--quiet",
                                    "--output-dir", str(tmp_path / "out" / "run"), "--cache-dir",
                                    str(tmp_path / "cache")])
    assert res.exit_code == 1 and "cifar10 not found" in res.output and "download" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no empty folder of its making is left
    monkeypatch.chdir(tmp_path)  # the default folder too
    res = CliRunner().invoke(main, ["compare", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--quiet",
                                    "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 1 and not list(tmp_path.iterdir())


def test_cuda_asked_but_absent(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = CliRunner().invoke(main, ["compare", "--device", "cuda", "--output-dir", str(tmp_path)])
    assert res.exit_code == 1 and "no CUDA device" in res.output


def test_backend_not_installed_says_what_to_install(tmp_path, missing_backend):
    res = CliRunner().invoke(main, ["compare", "--backends", missing_backend, "--output-dir", str(tmp_path)])
    assert res.exit_code == 1 and "pip install missing-framework" in res.output


def test_usage_error_is_exit_2():
    assert CliRunner().invoke(main, ["compare", "--T", "many"]).exit_code == 2
    assert CliRunner().invoke(main, ["nonsense"]).exit_code == 2


def test_sweep_without_traces(tmp_path):
    res = CliRunner().invoke(main, ["sweep", "--traces", str(tmp_path)])
    assert res.exit_code == 1 and "no <backend>-test.pt trace" in res.output


def test_debug_shows_the_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    import torch

    torch.save({"weights": 1}, junk)
    args = ["convert", "--checkpoint", str(junk), "--output-dir", str(tmp_path / "o")]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 1 and "not a snncutoff checkpoint" in plain.output and "Traceback" not in plain.output
    debug = CliRunner().invoke(main, ["--debug", *args])
    assert debug.exit_code == 1 and "Traceback" in debug.output
    after = CliRunner().invoke(main, [*args, "--debug"])  # after the command as well
    assert after.exit_code == 1 and "Traceback" in after.output


def test_a_folder_holding_another_commands_results_is_refused(compared, tmp_path):
    out, _, _ = compared
    before = (out / "results.json").read_bytes()
    res = CliRunner().invoke(main, ["sweep", "--traces", str(out / "traces"), "--output-dir", str(out), "--quiet"])
    assert res.exit_code == 1 and "holds the results of a `compare` run" in res.output, res.output
    assert (out / "results.json").read_bytes() == before
    runner = CliRunner()
    assert runner.invoke(main, ["train", "--epochs", "1", "--output-dir", str(tmp_path), "--quiet"]).exit_code == 0
    last = (tmp_path / "last.pt").read_bytes()
    res = runner.invoke(main, ["train", "--epochs", "1", "--output-dir", str(tmp_path), "--quiet"])
    assert res.exit_code == 1 and "holds a training run" in res.output and "--resume" in res.output, res.output
    assert (tmp_path / "last.pt").read_bytes() == last


def test_staging_folders_of_stopped_runs_are_cleared_or_completed(tmp_path):
    """A run killed (SIGKILL) before its publish leaves .incomplete-<pid>-*: removed by the next
    run; one killed during its publish is completed (the list of its files was written first)."""
    import subprocess
    import sys

    from snncutoff_bench.cli import _publish, _recover

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    old = {"results.json": b'{"run": "old"}', "pareto.png": b"old", "traces/snntorch-test.pt": b"old",
           "traces/spikingjelly-test.pt": b"old", "mine.txt": b"user"}
    for rel, data in old.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    unfinished = tmp_path / f".incomplete-{dead}-a"
    (unfinished / "traces").mkdir(parents=True)
    (unfinished / "traces" / "snntorch-test.pt").write_bytes(b"never published")
    alive = tmp_path / f".incomplete-{os.getpid()}-b"  # a run still going: left alone
    alive.mkdir()
    half = tmp_path / f".incomplete-{dead}-c"
    new = {"results.json": b'{"run": "new"}', "pareto.png": b"new", "traces/snntorch-test.pt": b"new"}
    for rel, data in new.items():
        (half / rel).parent.mkdir(parents=True, exist_ok=True)
        (half / rel).write_bytes(data)

    import snncutoff_bench.cli as cli

    moves = 0
    real_replace = os.replace

    def killed_after_one_move(src, dst):
        nonlocal moves
        moves += 1
        if moves == 2:
            raise KeyboardInterrupt  # (SIGKILL would stop it the same way, with nothing run after)
        real_replace(src, dst)

    cli.os.replace = killed_after_one_move
    try:
        with pytest.raises(KeyboardInterrupt):
            _publish(half, tmp_path)
    finally:
        cli.os.replace = real_replace
    assert not (tmp_path / "results.json").exists()  # stopped midway
    _recover(tmp_path)
    files = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {**new, "mine.txt": b"user"}  # the new run whole, the old traces gone, the user's file kept
    assert sorted(p.name for p in tmp_path.glob(".incomplete-*")) == [alive.name]


def test_results_json_is_strict_json(tmp_path):
    from snncutoff.io import atomic_write_json

    atomic_write_json({"a": float("nan"), "b": [1.5, float("inf")], "c": "x"}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [1.5, None], "c": "x"}


def test_info_and_speed(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["info", "--json"])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert {"torch", "spikingjelly", "snntorch", "cupy", "backends"} <= set(info)
    res = runner.invoke(main, ["speed", "--T", "2", "--batch-size", "8", "--repeats", "1", "--json", "--quiet",
                               "--output-dir", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    for e in d["backends"].values():
        assert {"native_ms_per_step", "step_ms_per_step", "run_ms_per_step", "adapter_overhead"} <= set(e)


def test_speed_early_exit(tmp_path):
    res = CliRunner().invoke(main, ["speed", "--early-exit", "--T", "4", "--batch-size", "16", "--repeats", "1",
                                    "--stream-repeats", "2", "--json", "--quiet", "--output-dir", str(tmp_path / "out"),
                                    "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["block"] == "auto"
    for e in d["backends"].values():
        assert {"realised_speedup", "ideal_speedup", "realised_over_ideal", "step_by_step_seconds",
                "full_block_seconds", "no_exit_overhead", "no_exit_decided_overhead", "network_bound_over_ideal",
                "decision_overhead",
                "step_by_step_network_bound_over_ideal"} <= set(e)
        assert e["network_calls"] >= 1 and e["network_only_seconds"] > 0
        assert e["stream_samples"] == 2 * d["test_samples"] and e["stream_refill_speedup"] > 0
    res = CliRunner().invoke(main, ["speed", "--early-exit", "--block", "0", "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 2 and "must be 'auto' or an integer >= 1" in res.output


@pytest.mark.parametrize("T", ["4", "1"])
def test_core_speed_small(T):
    res = CliRunner().invoke(main, ["core-speed", "--T", T, "--N", "300", "--C", "5", "--repeats", "1",
                                    "--decision-batch", "16", "--decision-calls", "3", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["exact_cold_speedup"] > 0
    assert set(d["decisions"]) == {"TopKGap(0.01)", "Confidence(0.001)", "Entropy(0.01)", "Conformal(0.05)",
                                   "Stability(3)", "LearnedExit(0.01)"}
    assert d["decisions"]["TopKGap(0.01)"]["over_topk"] == 1.0
    assert all(e["us_per_decision"] > 0 for e in d["decisions"].values())


def test_memory_small(tmp_path):
    res = CliRunner().invoke(main, ["memory", "--T", "3", "--N", "40", "--C", "6", "--variants", "memory,mmap,summary",
                                    "--folder", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert set(d["variants"]) == {"memory", "mmap", "summary"}
    for r in d["variants"].values():
        assert r["trace_bytes"] == 3 * 40 * 6 * 4 and r["peak_rss"] > 0 and r["topk_ns_per_element"] > 0
    assert (tmp_path / "trace-3x40x6.pt").is_file()
    assert d["variants"]["summary"]["summary_bytes_per_sample_step"] > 0


def test_memory_refuses_an_unknown_variant():
    res = CliRunner().invoke(main, ["memory", "--T", "2", "--N", "4", "--C", "3", "--variants", "memory,foo"])
    assert res.exit_code == 1 and "unknown 'foo'" in res.output


def test_too_small_a_calibration_set_is_refused_before_training_and_leaves_no_folder(tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", x=rng.integers(0, 255, (300, 8, 8), dtype=np.uint8), y=np.arange(300) % 3)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["compare", "--dataset", str(tmp_path / "small.npz"), "--quiet",
                                    "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 1 and "84 calibration samples" in res.output and "at least 460" in res.output
    assert "--calibration-size" in res.output and "fit_on" not in res.output
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing trained
    assert not any((tmp_path / "snncutoff-results").glob("compare-*"))  # no empty results folder left


def test_the_ann_cache_key_ignores_T_where_the_ann_never_sees_it():
    """A converted ANN on static inputs trains without time steps: any T reuses it. The direct
    route trains the SNN over T steps, and event data sets make T frames: T is in their keys."""
    from snncutoff_bench.config import BenchConfig

    assert BenchConfig(T=16).ann_key() == BenchConfig(T=8).ann_key()
    assert BenchConfig(T=16, seed=1).ann_key() != BenchConfig(T=16).ann_key()
    assert BenchConfig(T=4, route="direct").ann_key() != BenchConfig(T=8, route="direct").ann_key()
    assert BenchConfig(T=16, dataset="n-mnist").ann_key() != BenchConfig(T=8, dataset="n-mnist").ann_key()
