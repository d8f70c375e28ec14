import pickle

import pytest
import torch

import snncutoff as sc
from snncutoff import Trace

from .conftest import make_trace


def test_from_steps_accumulates():
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [2.0, 0.0]]])  # [T=2, N=2, C=2]
    tr = Trace.from_steps(y, torch.tensor([1, 0]))
    assert torch.equal(tr.outputs, torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 3.0], [2.0, 1.0]]]))
    assert (tr.T, tr.N, tr.C) == (2, 2, 2)
    assert tr.predictions().tolist() == [[0, 1], [1, 0]]
    assert tr.correct().tolist() == [[False, False], [True, True]]
    assert tr.accuracy_per_step().tolist() == [0.0, 1.0]
    assert torch.allclose(tr.per_step_outputs(), y)


def test_from_steps_accepts_a_list():
    steps = [torch.ones(3, 4), 2 * torch.ones(3, 4)]
    tr = Trace.from_steps(steps, torch.zeros(3, dtype=torch.long))
    assert tr.outputs[-1, 0, 0] == 3.0


def test_ties_take_the_first_index():
    tr = Trace(torch.ones(1, 1, 3), torch.tensor([2]))
    assert tr.predictions().tolist() == [[0]]


def test_cat_along_n():
    a, b = make_trace(N=5, seed=1, ops=True), make_trace(N=7, seed=2, ops=True)
    c = Trace.cat([a, b])
    assert c.N == 12 and torch.equal(c.outputs[:, 5:], b.outputs) and c.ops.shape == (8, 12)
    with pytest.raises(ValueError, match=r"\(T, C\)"):
        Trace.cat([a, make_trace(T=4)])
    with pytest.raises(ValueError, match="at least one"):
        Trace.cat([])


def test_save_load_roundtrip(tmp_path):
    tr = make_trace(ops=True)
    object.__setattr__(tr, "meta", {"backend": "snntorch", "T": 8})
    path = tr.save(tmp_path / "sub" / "trace.pt")
    payload = torch.load(path, weights_only=True)  # plain tensors only
    assert payload["format_version"] == 1
    back = Trace.load(path)
    assert torch.equal(back.outputs, tr.outputs) and torch.equal(back.labels, tr.labels)
    assert torch.equal(back.ops, tr.ops) and back.meta == {"backend": "snntorch", "T": 8}
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temporary


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    tr = make_trace()
    path = tr.save(tmp_path / "trace.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        make_trace(seed=3).save(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no snncutoff trace file"):
        Trace.load(tmp_path / "missing.pt")
    torch.save({"x": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a snncutoff trace"):
        Trace.load(tmp_path / "other.pt")
    torch.save({"format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="newer"):
        Trace.load(tmp_path / "new.pt")


@pytest.mark.parametrize(
    "outputs, labels, match",
    [
        (torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), "3-D"),
        (torch.zeros(0, 3, 2), torch.zeros(3, dtype=torch.long), "T >= 1"),
        (torch.zeros(2, 0, 2), torch.zeros(0, dtype=torch.long), "N = 0"),
        (torch.zeros(2, 3, 2), torch.zeros(4, dtype=torch.long), r"shape \[N\]"),
        (torch.zeros(2, 3, 2), torch.tensor([0, 1, 2]), r"\[0, 2\), found 2"),
        (torch.zeros(2, 3, 2), torch.tensor([0, -1, 1]), "found -1"),
    ],
)
def test_bad_shapes_and_labels(outputs, labels, match):
    with pytest.raises(ValueError, match=match):
        Trace(outputs, labels)


def test_bad_types():
    with pytest.raises(TypeError, match="integer"):
        Trace(torch.zeros(2, 3, 2), torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        Trace(torch.zeros(2, 3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Trace([[[0.0]]], torch.zeros(1, dtype=torch.long))


def test_nan_is_reported_with_count_and_position():
    out = torch.zeros(4, 5, 3)
    out[2, 3, 1] = float("nan")
    out[3, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 NaN or infinite.*\(t, n\) = \(2, 3\)"):
        Trace(out, torch.zeros(5, dtype=torch.long))


def test_huge_but_finite_outputs_are_accepted():
    out = torch.full((2, 2, 2), 3e38)
    Trace(out, torch.zeros(2, dtype=torch.long))


def test_ops_validation():
    with pytest.raises(ValueError, match=r"ops must have shape \[T, N\]"):
        Trace(torch.zeros(2, 3, 2), torch.zeros(3, dtype=torch.long), ops=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="non-negative"):
        Trace(torch.zeros(2, 3, 2), torch.zeros(3, dtype=torch.long), ops=-torch.ones(2, 3))


def test_trace_pickles():
    tr = make_trace()
    assert torch.equal(pickle.loads(pickle.dumps(tr)).outputs, tr.outputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_spike_counts_give_the_float32_results(dtype):
    g = torch.Generator().manual_seed(3)
    spikes = (torch.rand(12, 200, 6, generator=g) < torch.linspace(0.1, 0.6, 6)).float()  # integer counts <= 12
    labels = torch.randint(0, 6, (200,), generator=g)
    full, half = sc.Trace.from_steps(spikes, labels), sc.Trace.from_steps(spikes.to(dtype), labels)
    assert torch.equal(sc.optimal_cutoff(half).exit_step, sc.optimal_cutoff(full).exit_step)
    for rule in (sc.TopKGap(0.0), sc.Stability(2), sc.Timestep(5)):
        assert torch.equal(rule.fit(half).evaluate(half).exit_step, rule.fit(full).evaluate(full).exit_step)


def test_subset_save_and_load_errors_say_what_is_wrong(tmp_path):
    tr = Trace(torch.randn(3, 5, 4), torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(IndexError, match=r"\[0, N\) = \[0, 5\).*got 0 \.\. 10"):
        tr.subset(torch.tensor([0, 10]))
    with pytest.raises(TypeError, match="integer sample indices"):
        tr.subset(torch.tensor([0.0]))
    assert torch.equal(tr.subset(torch.tensor([-1])).labels, torch.tensor([0]))
    with pytest.raises(IsADirectoryError, match="is a folder: give a file path"):
        tr.save(tmp_path)
    tr.summary().save(tmp_path / "s.pt")
    with pytest.raises(ValueError, match="holds a trace summary.*TraceSummary.load"):
        Trace.load(tmp_path / "s.pt")


def test_a_one_class_trace_cannot_be_summarised_and_says_what_to_do():
    """C = 1 (a binary classifier's single logit): no top-1 / top-2 gap, in a trace or a summary."""
    from snncutoff.summary import TraceSummary, summarize

    torch.manual_seed(0)
    tr = Trace(torch.randn(4, 6, 1), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="gap needs C >= 2"):
        tr.summary()
    with pytest.raises(ValueError, match=r"needs C >= 2 classes.*torch\.cat\(\[-z, z\], 1\)"):
        TraceSummary(summarize(tr.outputs, tr.labels), tr.labels, 1)

    snn = pytest.importorskip("snntorch")

    class OneLogit(torch.nn.Module):  # said at the first batch, not after the whole loader
        def __init__(self):
            super().__init__()
            self.fc, self.lif, self.batches = torch.nn.Linear(3, 1), snn.Leaky(0.9, init_hidden=True, output=True), 0

        def forward(self, x):
            self.batches += 1
            return self.lif(self.fc(x))

    net = OneLogit()
    with pytest.raises(ValueError, match="needs C >= 2 classes"):
        sc.collect_trace("snntorch", net, [(torch.rand(4, 3), torch.zeros(4, dtype=torch.long))] * 5, T=2,
                         keep="summary", progress=False)
    assert net.batches == 2  # the first batch's two steps
