"""The conversion report: per-layer errors against a hand simulation, accuracies, warnings."""

import math
import warnings

import pytest
import torch
from torch import nn

import snncutoff as sc
from snncutoff import constraints
from snncutoff.fidelity import ConversionWarning, conversion_report

from .helpers import BACKENDS, backend_or_skip


def _two_layer(threshold: float = 1.0, levels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(2, 3), constraints.QCFS(levels=levels, threshold=threshold), nn.Linear(3, 2))
    with torch.no_grad():
        ann[0].weight.copy_(torch.tensor([[0.9, 0.1], [0.33, 0.0], [-0.2, 0.7]]))
        ann[0].bias.copy_(torch.tensor([0.05, 0.1, 0.0]))
    return ann.eval()


def _by_hand(ann: nn.Module, x: torch.Tensor, T: int) -> float:
    """Mean |QCFS activation - theta * IF firing rate| from the equations (DESIGN: IF, soft reset, V0 = theta/2)."""
    W, b = ann[0].weight.tolist(), ann[0].bias.tolist()
    theta, L = 1.0, 4
    total, count = 0.0, 0
    for row in x.tolist():
        for i in range(3):
            current = sum(W[i][j] * row[j] for j in range(2)) + b[i]
            act = theta * min(max(math.floor(max(current, 0.0) * L / theta + 0.5) / L, 0.0), 1.0)
            v, spikes = 0.5 * theta, 0
            for _ in range(T):
                v += current
                if v >= theta:
                    spikes += 1
                    v -= theta
            total += abs(act - theta * spikes / T)
            count += 1
    return total / count


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("T", [3, 8])
def test_layer_errors_match_a_hand_simulation(name, T):
    backend = backend_or_skip(name)
    ann = _two_layer()
    x = torch.tensor([[0.3, 0.0], [1.0, 0.5], [0.05, 0.9], [0.6, 0.6]])
    data = [(x, torch.tensor([0, 1, 1, 0]))]
    snn = backend.convert(ann)
    report = conversion_report(backend, ann, snn, data, T=T, warn=False)
    assert report["layers"][0]["path"] == "1" and report["layers"][0]["kind"] == "QCFS"
    assert report["layers"][0]["error"] == pytest.approx(_by_hand(ann, x, T), abs=1e-6)
    with torch.no_grad():
        assert report["ann_accuracy"] == float((ann(x).argmax(-1) == data[0][1]).double().mean())


def test_accuracies_and_warnings_name_the_worst_layer():
    backend = backend_or_skip("spikingjelly")
    ann = _two_layer()
    x = torch.rand(64, 2) * 0.8  # currents within [0, theta): the IF layer can match QCFS as T grows
    with torch.no_grad():
        y = ann(x).argmax(-1)
    data = [(x, y)]
    snn = backend.convert(ann)
    trace = sc.collect_trace(backend, snn, data, T=2, progress=False)
    with pytest.warns(ConversionWarning, match=r"points below the ANN.*largest conversion error is in layer '1'"):
        report = conversion_report(backend, ann, snn, data, T=2, trace=trace)
    assert report["ann_accuracy"] == 1.0 and report["snn_accuracy"] == float(trace.accuracy_per_step()[-1])
    assert report["best_accuracy"] == float(trace.accuracy_per_step().max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at T = L the IF rate is QCFS exactly (V0 = theta / 2): no warning
        exact = conversion_report(backend, ann, snn, data, T=4, warn=True)
    assert exact["layers"][0]["error"] < 1e-6 < report["layers"][0]["error"]
    assert not exact["warnings"] and exact["snn_accuracy"] == 1.0


def test_an_unset_threshold_cannot_be_converted_and_data_sets_it():
    ann = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    constraints.apply(ann, "qcfs", levels=4)
    backend = backend_or_skip("snntorch")
    with pytest.raises(ValueError, match="threshold of this QCFS was never set.*calibrate"):
        backend.convert(ann)
    with pytest.raises(ValueError, match="threshold is not set yet"):
        ann(torch.randn(2, 4))
    torch.manual_seed(0)
    data = [(torch.randn(500, 4), torch.zeros(500, dtype=torch.long))]
    set_ = constraints.calibrate(ann, data)
    with torch.no_grad():  # the stated statistic: the ceil(0.999 n)-th smallest positive pre-activation
        pre = ann[0](data[0][0]).flatten()
    pos = pre[pre > 0].sort().values
    assert set_ == {"1": float(pos[math.ceil(0.999 * pos.numel()) - 1])}
    assert float(ann[1].threshold.detach()) == set_["1"]
    given = constraints.apply(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), "qcfs", threshold=2.5, calibration=data)
    assert float(given[1].threshold.detach()) == 2.5  # a threshold the user gives is kept
    backend.convert(ann)


def test_trainer_sets_unset_thresholds_from_the_data_before_training():
    from snncutoff import data, models
    from snncutoff.train import TrainConfig, Trainer

    ann = constraints.apply(models.get("cnn"), "qcfs", levels=8)
    train, _ = data.digits().loaders(batch_size=256)
    trainer = Trainer(ann, TrainConfig(epochs=1, lr=3e-3), progress=False)
    trainer.fit(train)
    assert set(trainer.thresholds_) == {"2", "6", "10"}
    # standardised pre-activations (BatchNorm in its first, batch-statistics pass): a high percentile near 3
    assert all(1.5 < t < 6 for t in trainer.thresholds_.values())
    state = ann.state_dict()
    other = constraints.apply(models.get("cnn"), "qcfs", levels=2)
    other.load_state_dict(state)
    assert other[2].levels == 8  # the checkpoint's own L wins
