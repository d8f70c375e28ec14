"""Failure behaviour: exact resume, validated reads, atomic writes, one read of each loader."""

import collections
import errno
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import snncutoff as sc
from snncutoff import data, models
from snncutoff.io import CorruptFileError, DiskFullError, atomic_torch_save, load_torch
from snncutoff.train import TrainConfig, Trainer, load_model, seed_everything

from .conftest import make_trace


class _Interrupted(DataLoader):
    """A training loader that raises KeyboardInterrupt (Ctrl-C) after ``stop_after`` batches in all."""

    stop_after = -1

    def __iter__(self):
        for batch in super().__iter__():
            if self.stop_after == 0:
                raise KeyboardInterrupt
            self.stop_after -= 1
            yield batch


def _loaders(stop_after: int = -1):
    split = data.digits()
    train = _Interrupted(split.train, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(0))
    train.stop_after = stop_after
    return train, DataLoader(split.test, batch_size=256)


def _fit(folder: Path, stop_after: int = -1, resume: bool = False) -> Trainer:
    cfg = TrainConfig(epochs=3, lr=3e-3, seed=0)
    seed_everything(0)  # the same initial weights
    trainer = Trainer(models.get("cnn"), cfg, checkpoint_dir=folder, resume=resume, progress=False)
    return trainer.fit(*_loaders(stop_after))


def _same_checkpoints(a: Path, b: Path, name: str) -> None:
    ca, cb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
    assert ca["epoch"] == cb["epoch"] and ca["best_accuracy"] == cb["best_accuracy"]
    assert ca["history"] == cb["history"]
    assert ca["model"].keys() == cb["model"].keys()
    for k, v in ca["model"].items():  # tensors, and each QCFS layer's levels (extra state)
        assert torch.equal(v, cb["model"][k]) if isinstance(v, torch.Tensor) else v == cb["model"][k], k


def test_interrupted_and_resumed_training_equals_an_uninterrupted_run(tmp_path):
    """Ctrl-C in the middle of epoch 2 (shuffled data, seeded), then resume: the same weights, history
    (loss, learning rate, accuracies), best accuracy and best.pt as a run that was never stopped."""
    full = _fit(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", stop_after=8)  # 6 batches per epoch: stops in epoch 2
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = _fit(tmp_path / "cut", resume=True)
    assert resumed.history_ == full.history_ and len(full.history_) == 3
    assert resumed.best_accuracy_ == full.best_accuracy_
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    _same_checkpoints(tmp_path / "full", tmp_path / "cut", "last.pt")
    _same_checkpoints(tmp_path / "full", tmp_path / "cut", "best.pt")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "snncutoff_bench.cli", *args]


def test_cli_training_killed_with_sigkill_resumes_exactly(tmp_path):
    common = ["train", "--epochs", "3", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*common, "--output-dir", str(tmp_path / "full")), check=True, env=env, timeout=300)
    proc = subprocess.Popen(_cli(*common, "--output-dir", str(tmp_path / "cut")), env=env)
    last = tmp_path / "cut" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(last, weights_only=True)["epoch"]
    res = subprocess.run(_cli(*common, "--resume", "--output-dir", str(tmp_path / "cut")), env=env, timeout=300,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 1 <= epoch < 3  # killed in the middle of the run
    _same_checkpoints(tmp_path / "full", tmp_path / "cut", "last.pt")
    assert not list((tmp_path / "cut").glob(".*.tmp"))


# ------------------------------------------------------------------ validated reads
def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    files = {"empty": b"", "truncated": raw[: len(raw) // 2], "random bytes": bytes(range(256)) * 8,
             "text": b"hello, not a checkpoint\n"}
    out = {}
    for name, blob in files.items():
        p = folder / f"{name.replace(' ', '_')}.pt"
        p.write_bytes(blob)
        out[name] = p

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = folder / "code.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    out["pickled code"] = p
    return out


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_every_unreadable_file_is_one_clear_line(tmp_path):
    good = make_trace().save(tmp_path / "good.pt")
    for name, path in _bad_files(tmp_path, good).items():
        for load in (sc.Trace.load, lambda p: load_model(models.get("cnn"), p)):
            with pytest.raises(CorruptFileError) as info:
                load(path)
            msg = str(info.value)
            assert str(path) in msg and "\n" not in msg, name
            assert "weights_only=False" not in msg, name
    with pytest.raises(FileNotFoundError, match="no snncutoff checkpoint file"):
        load_model(models.get("cnn"), tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CorruptFileError, match="no 'model' state dict"):
        load_model(models.get("cnn"), tmp_path / "foreign.pt")
    with pytest.raises(CorruptFileError, match="holds a list"):
        torch.save([1, 2], tmp_path / "list.pt")
        load_torch(tmp_path / "list.pt", "thing", "make it again")


def test_a_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    atomic_torch_save({"model": models.get("cnn").state_dict()}, tmp_path / "cnn.pt")
    with pytest.raises(ValueError, match=r"does not match the model \(ResNet") as info:
        load_model(models.get("resnet20"), tmp_path / "cnn.pt")
    assert "\n" not in str(info.value) and "missing from the file" in str(info.value)


def test_trace_meta_is_made_json_ready_so_what_saves_loads(tmp_path):
    import datetime

    meta = {"seed": np.int64(3), "acc": np.float32(0.5), "when": datetime.datetime(2026, 11, 27, 12, 0),
            "path": Path("/data"), "shape": (1, 2), "t": torch.tensor(4)}
    tr = make_trace()
    saved = sc.Trace(tr.outputs, tr.labels, meta=meta)
    loaded = sc.Trace.load(saved.save(tmp_path / "t.pt"))
    assert loaded.meta == {"seed": 3, "acc": 0.5, "when": "2026-11-27T12:00:00", "path": "/data", "shape": [1, 2],
                           "t": 4}
    with pytest.raises(TypeError, match=r"meta\['x'\] must be JSON-ready"):
        sc.Trace(tr.outputs, tr.labels, meta={"x": torch.zeros(3)})
    with pytest.raises(TypeError, match="keys must be strings"):
        sc.Trace(tr.outputs, tr.labels, meta={1: 2})


# ------------------------------------------------------------------- atomic writes
def test_a_write_killed_midway_leaves_no_temporary_behind(tmp_path):
    target = tmp_path / "last.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pt.{dead.pid}.abc123.tmp"  # what a killed writer leaves
    stale.write_bytes(b"partial")
    alive = tmp_path / f".last.pt.{os.getpid()}.def456.tmp"  # a writer still running: left alone
    alive.write_bytes(b"in progress")
    other = tmp_path / f".best.pt.{dead.pid}.abc123.tmp"  # another file's temporary: left alone
    other.write_bytes(b"partial")
    atomic_torch_save({"x": 1}, target)
    assert not stale.exists() and alive.exists() and other.exists()
    assert torch.load(target, weights_only=True) == {"x": 1}


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), "zip"])
def test_a_full_disk_is_reported_as_such_and_leaves_the_old_file(tmp_path, monkeypatch, failure):
    target = atomic_torch_save({"x": 1}, tmp_path / "f.pt")
    before = target.read_bytes()

    def full(obj, f):
        f.write(b"part")
        if failure == "zip":  # torch's zip writer reports a short write this way
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 982")
        raise failure

    monkeypatch.setattr(torch, "save", full)
    if failure == "zip":  # the device is full when the check runs
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr("snncutoff.io.shutil.disk_usage", lambda p: usage(10**9, 10**9 - 1024, 1024))
    with pytest.raises(DiskFullError, match="no space left on the device") as info:
        atomic_torch_save({"x": 2}, target)
    assert "f.pt" in str(info.value)
    assert target.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_destination_is_named(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match="cannot create the folder") as info:
        atomic_torch_save({"x": 1}, blocker / "run" / "f.pt")
    assert str(blocker / "run") in str(info.value)


# ------------------------------------------------------- one read of each loader
def _rate(x, T):
    return (torch.rand(T, *x.shape) < x).float()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_progress_bar_never_changes_what_a_seeded_run_draws(workers):
    backend = sc.backends.get("snntorch") if sc.backends.available("snntorch")[0] else sc.backends.get(
        "spikingjelly")
    from .helpers import random_batches, small_ann

    snn = backend.convert(small_ann(), calibration=random_batches(seed=4))
    x = torch.cat([b[0] for b in random_batches(n=20, batches=3, seed=6)]).abs().clamp(0, 1)
    y = torch.cat([b[1] for b in random_batches(n=20, batches=3, seed=6)])
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20, num_workers=workers)
    traces = []
    for bar in (False, True):
        torch.manual_seed(5)
        traces.append(sc.collect_trace(backend, snn, loader, T=6, encoder=_rate, progress=bar))
    assert torch.equal(traces[0].outputs, traces[1].outputs)
    policy = sc.Confidence(0.75)
    post = policy.evaluate(traces[0])
    for refill in (False, True):
        for bar in (False, True):
            torch.manual_seed(5)
            real = sc.early_exit_loader(backend, snn, loader, policy, T=6, encoder=_rate, refill=refill,
                                        capacity=8, progress=bar)
            assert torch.equal(real.exit_step, post.exit_step) and torch.equal(real.predictions, post.predictions)


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(143)])
def test_ctrl_c_or_sigterm_while_torch_writes_is_an_interrupt_and_leaves_nothing(tmp_path, stop):
    """torch's zip writer, closed after a KeyboardInterrupt (Ctrl-C) or the SystemExit(143) the
    CLI raises on SIGTERM, raises its own RuntimeError ("unexpected pos"), which would hide it."""
    from snncutoff.io import _atomic

    def write(f):
        try:
            f.write(b"partial")
            raise stop
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 896 vs 790")

    (tmp_path / "t.pt").write_bytes(b"previous")
    with pytest.raises(type(stop)) as info:
        _atomic(tmp_path / "t.pt", write)
    assert isinstance(stop, KeyboardInterrupt) or info.value.code == 143
    assert (tmp_path / "t.pt").read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]


def test_a_save_made_while_handling_sigterm_reports_its_own_error(tmp_path):
    """The usual "save a last checkpoint on SIGTERM": a failure of that save is its own, not the
    SystemExit being handled when it began."""
    from snncutoff.io import atomic_torch_save

    try:
        raise SystemExit(143)
    except SystemExit:
        with pytest.raises(Exception, match="pickle") as info:
            atomic_torch_save({"f": lambda: 0}, tmp_path / "last.pt")
    assert not isinstance(info.value, SystemExit) and not list(tmp_path.iterdir())
