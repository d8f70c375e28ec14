"""The backend registry: entry points, availability, a third-party backend."""

import sys
import textwrap

import pytest
import torch
from torch import nn

import snncutoff as sc
from snncutoff import backends


def test_builtin_backends_are_registered():
    assert {"spikingjelly", "snntorch"} <= set(backends.names())
    for name in ("spikingjelly", "snntorch"):
        ok, why = backends.available(name)
        assert ok or "install" in why


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(KeyError, match="registered: .*snntorch"):
        backends.get("norse")
    with pytest.raises(ValueError, match="^no snncutoff backend named 'norse'"):  # also a ValueError, unquoted
        backends.get("norse")
    assert backends.available("norse")[0] is False


def test_a_rule_name_in_use_is_replaced_only_when_asked():
    from snncutoff.cutoff import RULES, Confidence, register, rule

    class Mine(Confidence):
        pass

    with pytest.raises(ValueError, match="a rule named 'confidence' exists \\(Confidence\\).*replace=True"):
        register("confidence", Mine)
    assert RULES["confidence"] is Confidence
    register("mine", Mine)
    register("mine", Mine)  # the same class again: nothing to replace
    try:
        register("confidence", Mine, replace=True)
        assert isinstance(rule("confidence"), Mine)
    finally:
        register("confidence", Confidence, replace=True)
        del RULES["mine"]


def test_third_party_backend_through_an_entry_point(tmp_path, monkeypatch):
    """A package that only declares an entry point is found without touching the core."""
    pkg = tmp_path / "toy_backend.py"
    pkg.write_text(textwrap.dedent('''
        import torch
        from torch import nn
        from snncutoff.backends import Backend

        class Counter(nn.Module):
            """A toy neuron: accumulates its input and fires when it reaches 1."""
            def __init__(self, threshold, v_init):
                super().__init__()
                self.threshold, self.v_init, self.v = threshold, v_init, None
            def forward(self, x):
                v = (self.v if self.v is not None else torch.full_like(x, self.v_init * self.threshold)) + x
                s = (v >= self.threshold).float()
                self.v = v - s * self.threshold
                return s * self.threshold

        class ToyBackend(Backend):
            name = "toy"
            def framework(self): return torch  # a framework of its own would be imported here, lazily
            def if_neuron(self, threshold, v_init): return Counter(threshold, v_init)
            def is_spiking(self, m): return isinstance(m, Counter)
            def is_stateful(self, m): return isinstance(m, Counter)
            def reset_module(self, m): m.v = None
            def select_module(self, m, keep):
                if m.v is not None: m.v = m.v[keep]
    '''))
    dist = tmp_path / "toy_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[snncutoff.backends]\ntoy = toy_backend:ToyBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "toy" in backends.names()
        toy = backends.get("toy")
        ann = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        snn = toy.convert(ann, calibration=data)
        trace = sc.collect_trace(toy, snn, data, T=16, count_ops=True, progress=False)
        assert trace.meta["backend"] == "toy" and trace.ops.shape == (16, 16)
        # it computes what the built-in backends compute
        for name in ("snntorch", "spikingjelly"):
            if backends.available(name)[0]:
                b = backends.get(name)
                ref = sc.collect_trace(b, b.convert(ann, calibration=data), data, T=16, progress=False)
                assert torch.equal(ref.outputs, trace.outputs)
    finally:
        sys.modules.pop("toy_backend", None)


def test_register_in_process(missing_backend):
    """The base class turns a failing framework import into the reason plus the install hint."""
    assert missing_backend in backends.names()
    with pytest.raises(ImportError, match="pip install missing-framework"):
        backends.get(missing_backend)
    expected = ("backend 'missing' is not usable: No module named 'missing_framework'; "
                "pip install missing-framework")
    assert backends.available(missing_backend) == (False, expected)


def test_core_imports_no_framework():
    import subprocess

    code = ("import sys, snncutoff, snncutoff.backends; "
            "snncutoff.backends.names(); "
            "print(any(m.split('.')[0] in ('spikingjelly', 'snntorch') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_adapters_do_not_import_heavy_modules():
    import subprocess

    code = ("import sys, snncutoff; b = snncutoff.backends.get('spikingjelly'); "
            "print(sorted({m for m in sys.modules if m.startswith('spikingjelly.') and "
            "any(h in m for h in ('datasets', 'monitor', '.model'))}))")
    pytest.importorskip("spikingjelly.activation_based.neuron")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_backends_own_layers_are_checked_as_modules_and_others_as_code(monkeypatch):
    """The converter's check reads a torch layer subclass's own forward as code unless a registered
    backend declares its package (Backend.layer_packages): the core names no framework."""
    import torch.nn.functional as F

    from snncutoff.backends import registry
    from snncutoff.graph import _scan, library_packages

    class Normalized(nn.Linear):
        def forward(self, x):
            return F.linear(F.normalize(x, dim=1), self.weight)

    Normalized.forward.__module__ = "acme_snn.layers"  # as if defined in a framework's package
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Normalized(4, 2))
    assert _scan(net) == ([], [("2", "F.normalize")])
    installed = {name for name in ("spikingjelly", "snntorch") if backends.available(name)[0]}
    assert installed <= library_packages() and "acme_snn" not in library_packages()

    class Acme(backends.Backend):
        name = "acme"
        layer_packages = ("acme_snn",)

    monkeypatch.setitem(registry._registered, "acme", Acme)
    registry._layer_packages.cache_clear()
    try:
        assert "acme_snn" in library_packages() and _scan(net) == ([], [])
    finally:
        monkeypatch.undo()
        registry._layer_packages.cache_clear()
    assert "acme_snn" not in library_packages()
