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

# Operations whose output is not linear (affine) in their input: a converted network applies
# them to each step's spikes, which is not the operation applied to the rates (the max of
# per-step values is not the max of their mean), so they are refused. By name, as the
# torch functions, the functionals and the Tensor methods call them.
_NONLINEAR_NAMES = {
    "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "fractional_max_pool2d", "fractional_max_pool3d", "lp_pool1d", "lp_pool2d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
    "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_",
    "minimum", "maximum", "fmin", "fmax", "max", "min", "amax", "amin",
    "floor", "floor_", "ceil", "ceil_", "round", "round_", "trunc", "trunc_", "sign", "abs", "abs_",
    "exp", "log", "sqrt", "rsqrt", "pow", "square", "softmax", "log_softmax", "softmin", "softplus",
    "softsign", "hardswish", "hardsigmoid", "mish", "selu", "celu", "rrelu", "prelu", "logsigmoid", "glu",
    "threshold", "layer_norm", "group_norm", "instance_norm", "local_response_norm", "normalize",
    "norm", "vector_norm", "matrix_norm", "linalg_vector_norm", "linalg_matrix_norm", "linalg_norm",
    "topk", "sort", "kthvalue", "median", "nanmedian", "mode", "var", "std", "prod", "cumprod", "reciprocal",
    "reciprocal_", "logsumexp", "erf", "sin", "cos", "tan", "log2", "log10", "log1p", "expm1", "exp2", "atan",
    "float_power", "__pow__", "__rpow__", "__ipow__", "floordiv", "floor_divide", "__floordiv__", "__rfloordiv__",
    "fmod", "remainder", "__mod__", "__rmod__",
}
# Comparisons of values computed from the input: a mask made from them (torch.where(h > 1, ...)) is a
# threshold, non-linear; a comparison that only steers control flow (if x.sum() > 0) is not.
_COMPARISONS = {"gt", "lt", "ge", "le", "greater", "less", "greater_equal", "less_equal", "__gt__", "__lt__",
                "__ge__", "__le__"}
_NONLINEAR_FUNCTIONS = {getattr(mod, name) for mod in (torch, F, torch.linalg) for name in _NONLINEAR_NAMES
                        if callable(getattr(mod, name, None))}
# Products and quotients, linear only while one side is a constant (a weight, a number): of two
# values computed from the input (x * y, x @ y, x / y) they are not.
_PRODUCTS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm",
             "einsum", "outer", "inner", "dot", "kron"}
_QUOTIENTS = {"div", "div_", "true_divide", "truediv", "__truediv__", "__itruediv__"}
_DIVISORS = {"__rtruediv__", "__rdiv__"}  # self is the divisor


def _metadata(node: torch.fx.Node) -> bool:
    """A node reading a tensor's shape, size or type (never its values)."""
    if node.op == "call_method":
        return node.target in ("size", "dim", "numel", "type", "get_device")
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "getattr" and len(node.args) > 1 \
        and node.args[1] in ("shape", "ndim", "dtype", "device", "is_cuda")


def _product_of_inputs(name: str, operands: list[bool]) -> str | None:
    """What makes an operation non-linear, given which operands (in order) depend on the input."""
    if name in _PRODUCTS and sum(operands) >= 2:
        return f"{name}, a product of two values computed from the input"
    if (name in _QUOTIENTS and len(operands) > 1 and operands[1]) or (name in _DIVISORS and operands and operands[0]):
        return f"{name}, a division by a value computed from the input"
    return None


def child_slots(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, child)`` for every child slot of ``module``: a module held under several names
    (one pooling layer placed three times in an ``nn.Sequential``) once per name, where
    ``named_children`` lists it only once."""
    return [(name, child) for name, child in module._modules.items() if child is not None]


def is_empty_sequential(m: nn.Module) -> bool:
    """An ``nn.Sequential()`` with no layers: the identity shortcut of the CIFAR ResNets."""
    return type(m) is nn.Sequential and len(m) == 0


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def is_dropout(m: nn.Module) -> bool:
    """A dropout layer, the identity at inference: torch's, or a framework's leaf layer named
    ``Dropout*`` with a float rate ``p`` (SpikingJelly's ``layer.Dropout``, which keeps its mask
    as step state but is no neuron)."""
    return isinstance(m, _DROPOUT) or (type(m).__name__.startswith("Dropout") and not m._modules
                                       and isinstance(getattr(m, "p", None), float))


def is_voting(m: nn.Module) -> bool:
    """SpikingJelly's ``layer.VotingLayer``: the mean of each group of ``voting_size`` outputs, a
    linear, stateless layer the SNN keeps as it is (duck-typed: the name and an int ``voting_size``)."""
    return type(m).__name__ == "VotingLayer" and not m._modules and isinstance(getattr(m, "voting_size", None), int)


def is_activation(m: nn.Module) -> bool:
    """An ``nn.ReLU`` or a constraint activation: what the converter turns into a neuron."""
    return type(m) is nn.ReLU or isinstance(m, Activation)


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_torch_layer(m: nn.Module) -> bool:
    """A torch.nn layer or a subclass of one (SpikingJelly's ``layer.Conv2d``, ``layer.MaxPool2d``...)."""
    return not isinstance(m, _CONTAINERS) and any(
        c is not nn.Module and c.__module__.startswith("torch.nn.") for c in type(m).__mro__)


class _Tracer(torch.fx.Tracer):
    """fx tracer that keeps constraint activations and torch layers (subclasses too) whole: their
    own forward (relu in a constraint, max pooling in a MaxPool) is checked as a module."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Activation) or _is_torch_layer(m) or super().is_leaf_module(m, qualname)


Findings = list[tuple[str, str]]
"""``[(module path, what)]``: where each finding is (the module whose ``forward`` does it) and what it is."""


def _scan(net: nn.Module) -> tuple[Findings, Findings] | None:
    """``(functional activations and reused activation modules, non-linear operations)`` in
    ``net``'s forward code, by tracing with ``torch.fx``; None when it cannot be traced."""
    try:
        graph = _Tracer().trace(net)
    except Exception:  # noqa: BLE001 - any tracing failure means "could not check statically"
        return None
    found, nonlinear, calls = [], [], {}
    depends: set[torch.fx.Node] = set()  # nodes whose value is computed from the input
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack.values()))[0] if stack else ""
        args: list[torch.fx.Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), args.append)
        if node.op == "placeholder" or (node.op != "get_attr" and any(a in depends for a in args)
                                        and not _metadata(node)):
            depends.add(node)
        if node not in depends and node.op != "call_module":
            continue  # computed from weights and numbers alone: a constant of the converted network
        if node.op in ("call_function", "call_method"):
            name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
            operands = [isinstance(a, torch.fx.Node) and a in depends for a in node.args]
            product = _product_of_inputs(name, operands)
            if product is not None:
                nonlinear.append((owner, product))
                continue
        if node.op == "call_function" and node.target in _FUNCTIONAL_RELU:
            found.append((owner, getattr(node.target, "__name__", str(node.target))))
        elif node.op == "call_method" and node.target in _METHOD_RELU:
            found.append((owner, f"Tensor.{node.target}"))
        elif node.op == "call_function" and (node.target in _NONLINEAR_FUNCTIONS or (
                getattr(node.target, "__module__", "") == "_operator"
                and node.target.__name__ in _NONLINEAR_NAMES | _COMPARISONS)):
            module = "F" if getattr(F, node.target.__name__, None) is node.target else (
                "operator" if node.target.__module__ == "_operator" else "torch")
            nonlinear.append((owner, f"{module}.{node.target.__name__}"))
        elif node.op == "call_method" and node.target in _NONLINEAR_NAMES | _COMPARISONS:
            nonlinear.append((owner, f"Tensor.{node.target}"))
        elif node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(net.named_modules())
    for target, n in calls.items():
        if n > 1 and is_activation(modules[target]):
            found.append((target, f"{type(modules[target]).__name__} module called {n} times per forward"))
    return found, nonlinear


def find_functional_activations(net: nn.Module) -> Findings | None:
    """``[(module path, what)]`` of functional activations in ``net``'s forward code.

    Traces with ``torch.fx`` (no data needed). Returns None when the network cannot be
    traced (data-dependent control flow); then :func:`check_by_running` is used.
    Also reports activation *modules* called more than once per forward.
    """
    scan = _scan(net)
    return None if scan is None else scan[0]


def find_nonlinear_operations(net: nn.Module) -> Findings | None:
    """``[(module path, what)]`` of non-linear operations other than the activations in
    ``net``'s forward code (``F.max_pool2d``, ``torch.clamp``, ``Tensor.floor``, a softmax,
    ...), which a converted network would apply to each step's spikes instead of their
    rates. Outside activation modules only (a constraint's own clamp is its business).
    None when the network cannot be traced."""
    scan = _scan(net)
    return None if scan is None else scan[1]


def check_by_running(net: nn.Module, example: Tensor) -> tuple[Findings, Findings]:
    """Run ``net`` once and catch functional activations and reused activation modules, and
    non-linear operations (as :func:`find_nonlinear_operations`): ``(activations, non-linear)``."""
    found, nonlinear, stack, calls = [], [], [""], {}
    names = {m: n for n, m in net.named_modules()}
    derived = {id(example): example}  # tensors computed from the input (kept alive: their ids stay theirs)
    masks: dict[int, tuple[str, str]] = {}  # comparisons among them: where they were made

    def from_input(a: object) -> bool:
        return isinstance(a, Tensor) and id(a) in derived

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            flat: list = []
            for a in (*args, *(kwargs or {}).values()):
                flat.extend(a if isinstance(a, (list, tuple)) else (a,))
            computed = any(from_input(a) for a in flat)  # else: from weights and numbers alone, a constant
            product = _product_of_inputs(name, [from_input(a) for a in args]) if computed else None
            if product is not None:
                nonlinear.append((stack[-1], product))
            elif computed and (func in _FUNCTIONAL_RELU or name in _METHOD_RELU):
                found.append((stack[-1], name))
            elif computed and name in _NONLINEAR_NAMES:
                nonlinear.append((stack[-1], name))
            if name not in ("__bool__", "item", "any", "all", "__get__"):  # a mask used as a value
                nonlinear.extend(masks.pop(id(a)) for a in flat if isinstance(a, Tensor) and id(a) in masks)
            out = func(*args, **(kwargs or {}))
            if computed and name in _COMPARISONS and isinstance(out, Tensor):
                masks[id(out)] = (stack[-1], name)
            if computed:
                for o in out if isinstance(out, (list, tuple)) else (out,):
                    if isinstance(o, Tensor):
                        derived[id(o)] = o
            return out

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
    # the constraints' own forward uses relu/clamp internally: not a functional activation; the
    # layers the converter checks as modules (MaxPool, norms) run their own functionals
    inside = {names[m] for m in activation_modules}
    found = [(p, w) for p, w in found if p not in inside]
    found += [(p, f"activation module called {n} times per forward") for p, n in calls.items() if n > 1]
    leaves = {n for n, m in net.named_modules() if len(m._modules) == 0}
    nonlinear = [(p, w) for p, w in nonlinear if p not in inside and p not in leaves]
    return found, nonlinear
