"""Bad input is a clear error naming what is wrong; legitimate unusual input is accepted."""

import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import snncutoff as sc
from snncutoff import constraints, data, models
from snncutoff.spec import IF, LIF
from snncutoff.summary import TraceSummary
from snncutoff.train import TrainConfig, Trainer, load_model

from .conftest import make_trace
from .helpers import random_batches, small_ann

TRACE = make_trace(T=4, N=12, C=3)


def _snn():
    b = sc.backends.get("snntorch") if sc.backends.available("snntorch")[0] else sc.backends.get("spikingjelly")
    return b, b.convert(small_ann(), calibration=random_batches(seed=1))


def _loader(labels=None, x=None, n=8):
    x = torch.randn(n, 1, 8, 8) if x is None else x
    return [(x, torch.arange(n) % 10 if labels is None else labels)]


REFUSED = [
    # traces
    (lambda: sc.Trace.from_steps(np.zeros((2, 3, 4)), torch.zeros(3, dtype=torch.long)), TypeError,
     "per_step_outputs must be a"),
    (lambda: sc.Trace.from_steps([torch.zeros(3, 4), torch.zeros(2, 4)], torch.zeros(3, dtype=torch.long)),
     ValueError, "the same \\[N, C\\] shape"),
    (lambda: sc.Trace.from_steps(torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long), meta=[1]), TypeError,
     "meta must be a dict"),
    (lambda: sc.Trace(torch.zeros(2, 3, 4, device="meta"), torch.zeros(3, dtype=torch.long)), ValueError,
     "meta device"),
    (lambda: TraceSummary(TRACE.summary().statistics, TRACE.labels, TRACE.C, meta=[1]), TypeError,
     "meta must be a dict"),
    (lambda: TraceSummary({**TRACE.summary().statistics, "gaps": TRACE.gaps().index_fill(1, torch.tensor([3]),
                                                                                      math.nan)},
                          TRACE.labels, TRACE.C), ValueError, r"'gaps' holds 4 NaN .* \(t, n\) = \(0, 3\)"),
    (lambda: TraceSummary({**TRACE.summary().statistics, "predictions": TRACE.predictions() + 3}, TRACE.labels,
                          TRACE.C), ValueError, r"'predictions' must hold classes in \[0, C\) = \[0, 3\)"),
    (lambda: TraceSummary({**TRACE.summary().statistics, "gaps": [1, 2]}, TRACE.labels, TRACE.C), ValueError,
     r"'gaps' must be a \[T, N\] tensor, got list"),
    (lambda: TraceSummary(TRACE.summary().statistics, TRACE.labels, "five"), TypeError, "C must be an integer"),
    (lambda: TRACE.summary().subset(torch.tensor([0, 12])), IndexError, r"in \[0, N\) = \[0, 12\)"),
    (lambda: TRACE.summary().subset(torch.tensor([], dtype=torch.long)), ValueError, "N >= 1"),
    (lambda: sc.collect_trace(*_snn(), _loader(labels=torch.arange(8) + 5), T=2, keep="summary", progress=False),
     ValueError, r"labels must lie in \[0, C\) = \[0, 10\), found 12"),
    (lambda: TRACE.predictions_at(torch.zeros(12, dtype=torch.long)), ValueError, r"steps must lie in \[1, T\]"),
    (lambda: TRACE.predictions_at(torch.full((12,), 5)), ValueError, r"\[1, T\] = \[1, 4\].* got 5 \.\. 5"),
    (lambda: TRACE.predictions_at(torch.ones(11, dtype=torch.long)), ValueError, r"shape \[N\] = \[12\]"),
    (lambda: TRACE.summary().predictions_at(torch.ones(12)), TypeError, "integer tensor of 1-based steps"),
    (lambda: sc.RiskControl(sc.TopKGap(), seed=1.5), TypeError, "seed must be an integer"),
    (lambda: sc.RiskControl(sc.TopKGap(), seed=-1), ValueError, "seed must be an integer >= 0"),
    (lambda: sc.RiskControl(sc.TopKGap(), delay="no"), TypeError, "delay must be True or False"),
    (lambda: sc.RiskControl(sc.TopKGap()).value_, AttributeError, "not fitted: call fit.* before reading value_"),
    (lambda: sc.Stability(2).exit_now(0, TRACE.outputs[0], torch.zeros(12, 4, dtype=torch.bool)), TypeError,
     "state must be the float64 tensor"),
    (lambda: data.digits(test_size=0), ValueError, r"cannot split 1797 samples with test_size=0"),
    (lambda: data.digits(seed=2**40), ValueError, r"seed must lie in \[0, 2\*\*32\)"),
    (lambda: data.digits().holdout(100).holdout(10), ValueError, "already holds a calibration set"),
    (lambda: Trainer(constraints.apply(models.get("cnn"), "qcfs"), TrainConfig(epochs=1), progress=False).fit(
        _loader(x=torch.randn(8, 3, 8, 8))), ValueError, "set its constraint thresholds failed: .*3 channels"),
    (lambda: sc.Confidence(0.5).fit(make_trace(C=6)).evaluate(make_trace(C=5)), ValueError, "C = 6 classes"),
    (lambda: sc.Trace.cat(TRACE), TypeError, "takes a list of traces"),
    (lambda: sc.Trace.cat([TRACE, "x"]), TypeError, "item 1 is a str"),
    (lambda: sc.Trace(TRACE.outputs, TRACE.labels.float()), TypeError, "integer tensor"),
    (lambda: TRACE.save(None), TypeError, "path must be a file path"),
    (lambda: sc.Trace.load(5), TypeError, "path must be a file path"),
    (lambda: sc.Trace.load("x.pt", map_location="bogus"), ValueError, "device must be"),
    # policies
    (lambda: sc.TopKGap(0.0).fit(TRACE).exit_now(torch.full((12,), 2.5), TRACE.outputs[1]), TypeError,
     "integer tensor"),
    (lambda: sc.TopKGap(0.0).fit(TRACE).exit_block(3, TRACE.outputs[:0]), ValueError, "holds no step"),
    (lambda: sc.Confidence(0.1).exit_now(0, torch.full((2, 3), math.nan)), ValueError, "NaN or infinite"),
    (lambda: sc.sweep(sc.TopKGap(), TRACE, TRACE, 0.1), TypeError, "values must be a list"),
    (lambda: sc.sweep("topk", TRACE, TRACE, [0.1]), TypeError, "policy must be a cutoff rule"),
    (lambda: sc.sweep(sc.TopKGap, TRACE, TRACE, [0.1]), TypeError, "pass an instance, TopKGap\\(\\)"),
    (lambda: sc.TopKGap().fit(make_trace(C=4)).evaluate(make_trace(C=6)), ValueError, "C = 4 classes"),
    # early exit on inputs the network was not built for
    (lambda: sc.early_exit(*_snn(), torch.randn(4, 1, 12, 12), sc.Timestep(2), T=3), ValueError,
     "each sample, \\[1, 12, 12\\] here, has the shape the network was built for"),
    # encoding, collection
    (lambda: sc.encode(torch.zeros(2, 3), 0), ValueError, "T must be an integer >= 1"),
    (lambda: sc.encode(torch.zeros(2, 3), 2.5), TypeError, "T must be an integer"),
    (lambda: sc.encode([1, 2], 3), TypeError, "inputs must be a torch.Tensor"),
    (lambda: sc.encode(torch.zeros(3), 2, "frames"), ValueError, "takes \\[N, T, ...\\]"),
    (lambda: sc.encode(torch.zeros(3, 2), 2, lambda x, T: x), ValueError, "encoder must return a time-major"),
    (lambda: sc.collect_trace(*_snn(), None, T=2, progress=False), TypeError, "data must be an iterable"),
    (lambda: sc.collect_trace(*_snn(), _loader(), T=2, meta=[1], progress=False), TypeError, "meta must be a dict"),
    (lambda: sc.collect_trace(*_snn(), _loader(labels=torch.rand(8)), T=2, progress=False), TypeError,
     "labels must be integer"),
    (lambda: sc.collect_trace(*_snn(), _loader(labels=torch.arange(5)), T=2, progress=False), ValueError,
     "labels of shape \\(5,\\)"),
    (lambda: sc.collect_trace(*_snn(), _loader(), T=2, readout=lambda o: 1.0, progress=False), ValueError,
     "readout callable returned a float"),
    (lambda: sc.collect_trace(*_snn(), _loader(), T=2, device="bogus", progress=False), ValueError,
     "device must be"),
    # early exit
    (lambda: sc.early_exit(*_snn(), torch.full((4, 1, 8, 8), math.nan), sc.Confidence(0.5), T=3), ValueError,
     "inputs holds 256 NaN"),
    (lambda: sc.early_exit(*_snn(), torch.randn(4, 1, 8, 8), "topk", T=3), TypeError, "policy must be a cutoff"),
    (lambda: sc.early_exit(*_snn(), [1, 2], sc.Confidence(0.5), T=3), TypeError, "inputs must be a torch.Tensor"),
    (lambda: sc.early_exit(*_snn(), torch.randn(4, 1, 12, 12), sc.Confidence(0.5), T=3), ValueError,
     "inputs of shape \\[4, 1, 12, 12\\]"),
    (lambda: sc.early_exit_loader(*_snn(), _loader(labels=torch.arange(8) + 5), sc.Confidence(0.5), T=3,
                                  progress=False), ValueError, "\\[0, 10\\)"),
    (lambda: sc.early_exit_loader(*_snn(), _loader(labels=-torch.ones(8, dtype=torch.long)), sc.Confidence(0.5),
                                  T=3, refill=True, progress=False), ValueError, "found -1"),
    (lambda: sc.early_exit_loader(*_snn(), _loader(), sc.Confidence(0.5), T=3, capacity=-5, progress=False),
     ValueError, "capacity must be an integer >= 1"),
    (lambda: sc.early_exit_loader(*_snn(), _loader() + _loader(x=torch.randn(8, 1, 6, 6)), sc.Confidence(0.99),
                                  T=3, refill=True, capacity=4, progress=False), ValueError,
     "every sample must have the same shape"),
    (lambda: list(sc.stream_early_exit(*_snn(), [torch.randn(4, 1, 8, 8), torch.randn(3, 1, 8, 8)],
                                       sc.Confidence(0.0), T=3)), ValueError, "frame 1 of the stream has 3 rows"),
    (lambda: list(sc.stream_early_exit(*_snn(), [torch.full((4, 1, 8, 8), math.inf)], sc.Confidence(0.0), T=1)),
     ValueError, "frame 0 of the stream holds"),
    (lambda: list(sc.stream_early_exit(*_snn(), None, sc.Confidence(0.0), T=1)), TypeError,
     "frames must be an iterable"),
    # specs and conversion
    (lambda: IF(threshold=math.inf), ValueError, "IF threshold must be a finite number"),
    (lambda: IF(threshold=True), TypeError, "IF threshold must be a number"),
    (lambda: IF(threshold="1"), TypeError, "IF threshold must be a number"),
    (lambda: LIF(tau=math.inf), ValueError, "LIF tau must be a finite number"),
    (lambda: LIF(v_reset=math.nan), ValueError, "LIF v_reset must be a finite number"),
    (lambda: LIF(detach_reset="no"), TypeError, "detach_reset must be True or False"),
    (lambda: _snn()[0].convert(small_ann(), calibration=random_batches(seed=1), threshold_rule="abc%"), ValueError,
     "threshold rule must be"),
    (lambda: _snn()[0].convert(small_ann(), calibration=torch.randn(8, 1, 8, 8)), TypeError, "single tensor"),
    (lambda: _snn()[0].convert(small_ann(), calibration=[torch.randn(4, 1, 12, 12)]), ValueError,
     "calibration batch 0 of shape \\[4, 1, 12, 12\\]"),
    (lambda: _snn()[0].convert(small_ann(), calibration=[torch.full((4, 1, 8, 8), math.inf)]), ValueError,
     "calibration batch 0 holds"),
    (lambda: _snn()[0].convert(_snn()[1]), sc.ConversionError, "already holds spiking neurons"),
    (lambda: _snn()[0].convert(nn.Sequential(nn.LSTM(4, 4)), calibration=[torch.randn(2, 3, 4)]),
     sc.ConversionError, "'0' \\(LSTM\\) cannot be converted"),
    # constraints, training, models
    (lambda: constraints.apply(None), TypeError, "ann must be a torch.nn.Module"),
    (lambda: constraints.QCFS(learnable="no"), TypeError, "learnable must be True or False"),
    (lambda: constraints.TrackedReLU(momentum="0.9"), TypeError, "momentum must be a number"),
    (lambda: TrainConfig(epochs="3"), TypeError, "epochs must be an integer"),
    (lambda: TrainConfig(batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    (lambda: TrainConfig(rcs_alpha=math.nan), ValueError, "rcs_alpha must be a finite number"),
    (lambda: TrainConfig(rcs_fraction=2), ValueError, "rcs_fraction must lie in"),
    (lambda: TrainConfig(encoder="bogus"), ValueError, "encoder must be one of"),
    (lambda: sc.collect_trace(*_snn(), _loader(), T=2, encoder="poisson", progress=False), ValueError,
     r"encoder must be one of .*got 'poisson'\. Spike codings come from the frameworks: .*spikegen\.rate"),
    (lambda: Trainer(None), TypeError, "model must be a torch.nn.Module"),
    (lambda: Trainer(models.get("cnn"), device="bogus"), ValueError, "device must be"),
    (lambda: Trainer(models.get("cnn"), TrainConfig(epochs=1), progress=False).fit(
        _loader(x=torch.full((8, 1, 8, 8), math.nan))), ValueError, "inputs of training batch 0 holds"),
    (lambda: Trainer(models.get("cnn"), TrainConfig(epochs=1), progress=False).fit(
        _loader(labels=torch.arange(8) + 5)), ValueError, "the model has 10 outputs"),
    (lambda: Trainer(models.get("cnn"), TrainConfig(epochs=1), progress=False).fit([]), ValueError,
     "yielded no batch"),
    (lambda: Trainer(models.get("cnn"), TrainConfig(epochs=1), progress=False).fit(
        _loader(x=torch.randn(8, 1, 2, 2))), ValueError, "training batch 0 of shape \\[8, 1, 2, 2\\]"),
    (lambda: Trainer(models.get("cnn"), progress=False).evaluate(_loader(labels=torch.rand(8))), TypeError,
     "labels must be integer"),
    (lambda: load_model(None, "x.pt"), TypeError, "model must be a torch.nn.Module"),
    (lambda: models.get("cnn", num_classes=0), ValueError, "num_classes must be an integer >= 2"),
    (lambda: models.get("cnn", num_classes="10"), TypeError, "num_classes must be an integer"),
    (lambda: models.get("vgg11", input_size=8), ValueError, "at least 32x32"),
    (lambda: data.digits().loaders(seed="x"), TypeError, "seed must be an integer"),
    (lambda: data.load("mnist", 5), TypeError, "data_dir must be a folder path"),
]


@pytest.mark.parametrize("call, error, message", REFUSED, ids=range(len(REFUSED)))
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    text = str(info.value)
    assert "\n" not in text.strip() or "Traceback" not in text


ACCEPTED = [
    lambda: sc.TopKGap(0.0).fit(TRACE).exit_now(np.int64(2), TRACE.outputs[2]),
    lambda: sc.collect_trace(*_snn(), _loader(), T=np.int64(2), progress=False),
    lambda: sc.early_exit(*_snn(), torch.randn(4, 1, 8, 8), sc.Confidence(0.5), T=np.int64(3), block=np.int64(2)),
    lambda: sc.early_exit_loader(*_snn(), _loader(), sc.Confidence(0.5), T=3, refill=True, capacity=np.int64(4),
                                 progress=False),
    lambda: constraints.apply(small_ann(), "qcfs", levels=np.int64(4), threshold=np.float32(4.0)),
    lambda: constraints.Clip(threshold=torch.tensor(2.0)),
    lambda: TrainConfig(lr=np.float32(1e-3)).to_json(),
    lambda: Trainer(models.get("cnn"), TrainConfig(epochs=1), progress=False).fit(
        _loader(labels=(torch.arange(8) % 10).int())),  # int32 labels
    lambda: sc.Trace(TRACE.outputs.double(), TRACE.labels.int()),
    lambda: sc.Trace(torch.zeros(1, 1, 2), torch.zeros(1, dtype=torch.long)),  # T = N = 1, C = 2
    lambda: data.digits().holdout(np.int64(100)),
    lambda: Trainer(constraints.apply(models.get("cnn"), "qcfs"), TrainConfig(epochs=1), progress=False).fit(
        _loader()),  # unset thresholds set from a list of batches
    lambda: sc.Trace.from_steps(torch.randn(2, 3, 4, requires_grad=True), torch.zeros(3, dtype=torch.long)),
]


@pytest.mark.parametrize("call", ACCEPTED, ids=range(len(ACCEPTED)))
def test_legitimate_unusual_input_is_accepted(call):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and quietly
        call()


def test_a_trace_with_a_datetime_put_in_meta_later_still_saves_and_loads(tmp_path):
    import datetime

    tr = make_trace()
    tr.meta["when"] = datetime.datetime(2026, 1, 1)
    assert sc.Trace.load(tr.save(tmp_path / "t.pt")).meta["when"] == "2026-01-01T00:00:00"


def test_an_unreadable_file_is_named_as_such(tmp_path):
    path = make_trace().save(tmp_path / "t.pt")
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as readable as any file
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as a user who may read anything (root)")
    with pytest.raises(PermissionError, match="permission denied"):
        sc.Trace.load(path)


def _flip_a_bit(path, member_ends_with: str = "", offset: int = 100) -> None:
    """Flip one bit inside the bytes of a member of the zip file ``path`` (the largest, by default)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if i.filename.endswith(member_ends_with)), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + offset] ^= 0x10  # (the local header's own lengths)
    path.write_bytes(bytes(raw))


def test_a_bit_flipped_in_a_saved_file_is_found(tmp_path):
    from snncutoff.io import CorruptFileError

    path = make_trace(T=4, N=50, C=10).save(tmp_path / "t.pt")
    _flip_a_bit(path, "data/0")
    with pytest.raises(CorruptFileError, match=r"t\.pt is not a readable snncutoff trace file: it is damaged "
                                               r"\(.*data/0 does not match its checksum\)"):
        sc.Trace.load(path)
    Trainer(models.get("cnn"), TrainConfig(epochs=1), checkpoint_dir=tmp_path, progress=False).fit(_loader())
    _flip_a_bit(tmp_path / "last.pt", offset=8)
    with pytest.raises(CorruptFileError, match="last.pt is not a readable .* it is damaged"):
        load_model(models.get("cnn"), tmp_path / "last.pt")


def test_a_file_saved_without_checksums_loads_and_its_damage_is_not_guessed(tmp_path):
    """torch.serialization.set_crc32_options(False) stores CRC 0 for every member: no checksum to check."""
    if not hasattr(torch.serialization, "set_crc32_options"):
        pytest.skip("this torch always writes checksums")
    trace = make_trace(T=4, N=50, C=10)
    torch.serialization.set_crc32_options(False)
    try:
        path = trace.save(tmp_path / "t.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(sc.Trace.load(path).outputs, trace.outputs)
    path = trace.save(tmp_path / "checked.pt")  # the same file with checksums: a flipped bit is found
    _flip_a_bit(path, "data/0")
    with pytest.raises(Exception, match="does not match its checksum"):
        sc.Trace.load(path)


def test_a_legacy_format_file_is_mapped_only_after_saving_it_again(tmp_path):
    from snncutoff.io import CorruptFileError

    t = make_trace(T=3, N=4, C=5)
    torch.save({"format_version": 1, "outputs": t.outputs, "labels": t.labels, "ops": None, "meta": {}},
               tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CorruptFileError, match="legacy .* cannot be memory-mapped: load it with mmap=False"):
        sc.Trace.load(tmp_path / "old.pt", mmap=True)
    again = sc.Trace.load(tmp_path / "old.pt").save(tmp_path / "new.pt")
    assert torch.equal(sc.Trace.load(again, mmap=True).outputs, t.outputs)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_diverged_weights_are_refused(tmp_path):
    net = models.get("cnn")
    state = net.state_dict()
    state["0.weight"][0, 0, 0, 0] = math.nan
    torch.save({"model": state}, tmp_path / "nan.pt")
    with pytest.raises(sc.io.CorruptFileError, match="NaN or infinite weights"):
        load_model(models.get("cnn"), tmp_path / "nan.pt")


@pytest.mark.parametrize("args, message", [
    (["--device", "bogus"], "--device: device must be"),
    (["--rcs-alpha", "nan"], "--rcs-alpha must be a finite number"),
    (["--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
    (["--seed", "99999999999999999999"], "is not in the range 0<=x<=4294967295"),
    (["--max-loss", "1.5"], "1.5 is not in the range"),
    (["--calibration-size", "5000"], "calibration size must be a fraction"),
])
def test_cli_refuses_bad_options_in_one_line(args, message, tmp_path):
    from snncutoff_bench.cli import main

    res = CliRunner().invoke(main, ["compare", *args, "--epochs", "1", "--T", "2", "--output-dir", str(tmp_path),
                                    "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert res.exit_code in (1, 2) and message in res.output and "Traceback" not in res.output


def test_two_runs_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    from snncutoff_bench.cli import _output_dir

    monkeypatch.chdir(tmp_path)
    a, b = _output_dir(None, "compare"), _output_dir(None, "compare")
    assert a != b and a.is_dir() and b.is_dir() and str(os.getpid()) in a.name
