"""Inspection of a network's forward code: activations used as functions, modules called twice.

Used by the converter (an activation must be a module of its own, called once per
forward, to become a neuron) and by :func:`snncutoff.constraints.apply` (only modules
can be swapped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Activation(nn.Module):
    """Marker base class of the activation modules a converter turns into neurons (the constraints)."""


_FUNCTIONAL_RELU = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu,
                    torch.sigmoid, torch.tanh, F.hardtanh, F.elu}
_METHOD_RELU = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_min", "clip"}


def is_empty_sequential(m: nn.Module) -> bool:
    """An ``nn.Sequential()`` with no layers: the identity shortcut of the CIFAR ResNets."""
    return type(m) is nn.Sequential and len(m) == 0


def is_activation(m: nn.Module) -> bool:
    """An ``nn.ReLU`` or a constraint activation: what the converter turns into a neuron."""
    return type(m) is nn.ReLU or isinstance(m, Activation)


class _Tracer(torch.fx.Tracer):
    """fx tracer that keeps constraint activations whole (their own forward uses relu)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Activation) or super().is_leaf_module(m, qualname)


def find_functional_activations(net: nn.Module) -> list[tuple[str, str]] | None:
    """``[(module path, what)]`` of functional activations in ``net``'s forward code.

    Traces with ``torch.fx`` (no data needed). Returns None when the network cannot be
    traced (data-dependent control flow); then :func:`check_by_running` is used.
    Also reports activation *modules* called more than once per forward.
    """
    try:
        graph = _Tracer().trace(net)
    except Exception:  # noqa: BLE001 - any tracing failure means "could not check statically"
        return None
    found, calls = [], {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack.values()))[0] if stack else ""
        if node.op == "call_function" and node.target in _FUNCTIONAL_RELU:
            found.append((owner, getattr(node.target, "__name__", str(node.target))))
        elif node.op == "call_method" and node.target in _METHOD_RELU:
            found.append((owner, f"Tensor.{node.target}"))
        elif node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(net.named_modules())
    for target, n in calls.items():
        if n > 1 and is_activation(modules[target]):
            found.append((target, f"{type(modules[target]).__name__} module called {n} times per forward"))
    return found


def check_by_running(net: nn.Module, example: Tensor) -> list[tuple[str, str]]:
    """Run ``net`` once and catch functional activations and reused activation modules."""
    found, stack, calls = [], [""], {}
    names = {m: n for n, m in net.named_modules()}

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if func in _FUNCTIONAL_RELU or name in _METHOD_RELU:
                found.append((stack[-1], name))
            return func(*args, **(kwargs or {}))

    def pre(m, _):
        stack.append(names.get(m, ""))
        if is_activation(m):
            calls[names[m]] = calls.get(names[m], 0) + 1

    def post(m, _in, _out):
        stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m in net.modules()]
    handles += [m.register_forward_hook(post) for m in net.modules()]
    activation_modules = {m for m in net.modules() if is_activation(m)}
    try:
        with torch.no_grad(), Spy():
            net(example)
    finally:
        for h in handles:
            h.remove()
    # the constraints' own forward uses relu/clamp internally: not a functional activation
    found = [(p, w) for p, w in found if not any(p == names[m] for m in activation_modules)]
    found += [(p, f"activation module called {n} times per forward") for p, n in calls.items() if n > 1]
    return found
