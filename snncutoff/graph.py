"""Inspection of a network's forward code: activations used as functions, modules called twice.

Used by the converter (an activation must be a module of its own, called once per
forward, to become a neuron) and by :func:`snncutoff.constraints.apply` (only modules
can be swapped).
"""

from __future__ import annotations

import dataclasses
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Activation(nn.Module):
    """Marker base class of the activation modules a converter turns into neurons (the constraints)."""


# Activations, by name (a function, a Tensor method, or their in-place forms ending in "_")
_ACTIVATION_NAMES = {"relu", "relu6", "leaky_relu", "gelu", "silu", "sigmoid", "special_expit", "tanh", "hardtanh",
                     "elu"}

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
    "minimum", "maximum", "fmin", "fmax", "max", "min", "amax", "amin", "argmax", "argmin", "argsort",
    "floor", "floor_", "ceil", "ceil_", "round", "round_", "trunc", "trunc_", "frac", "sign", "sgn", "abs", "abs_",
    "exp", "log", "sqrt", "rsqrt", "pow", "square", "softmax", "log_softmax", "softmin", "softplus",
    "softsign", "hardswish", "hardsigmoid", "mish", "selu", "celu", "rrelu", "prelu", "logsigmoid", "glu",
    "hardshrink", "softshrink", "tanhshrink", "threshold", "heaviside", "bucketize", "searchsorted",
    "layer_norm", "group_norm", "instance_norm", "local_response_norm", "normalize",
    "norm", "vector_norm", "matrix_norm", "linalg_vector_norm", "linalg_matrix_norm", "linalg_norm",
    "cosine_similarity", "pairwise_distance", "cdist", "pdist", "dist", "scaled_dot_product_attention",
    "topk", "sort", "kthvalue", "median", "nanmedian", "mode", "var", "std", "prod", "cumprod", "cummax",
    "cummin", "logcumsumexp", "reciprocal", "reciprocal_", "logsumexp", "erf", "erfc", "erfinv", "logit",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh",
    "log2", "log10", "log1p", "expm1", "exp2", "xlogy", "hypot", "logaddexp", "logaddexp2", "sinc",
    "gumbel_softmax", "rms_norm", "var_mean", "std_mean", "aminmax",
    "float_power", "__pow__", "__rpow__", "__ipow__", "floordiv", "floor_divide", "__floordiv__", "__rfloordiv__",
    "fmod", "remainder", "__mod__", "__rmod__",
}
# Comparisons of values computed from the input: a mask made from them (torch.where(h > 1, ...)) is a
# threshold, non-linear; a comparison that only steers control flow (if x.sum() > 0) is not.
_COMPARISONS = {"gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal", "not_equal",
                "isclose", "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__"}
# Products and quotients, linear only while one side is a constant (a weight, a number): of two
# values computed from the input (x * y, x @ y, x / y) they are not. For each product, the
# operands multiplied together (None: any two); for each quotient, the divisor's position.
_PRODUCTS: dict[str, tuple[int, ...] | None] = {
    **dict.fromkeys(("mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__", "matmul", "__matmul__",
                     "__rmatmul__", "mm", "bmm", "mv", "einsum", "outer", "ger", "inner", "dot", "vdot", "kron",
                     "tensordot", "chain_matmul", "multi_dot"), None),
    **dict.fromkeys(("linear", "bilinear", "cross", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                     "conv_transpose2d", "conv_transpose3d"), (0, 1)),  # input and weight
    **dict.fromkeys(("addcmul", "addcmul_", "addmm", "addmm_", "addbmm", "baddbmm", "addmv", "addr"), (1, 2)),
}
_QUOTIENTS = {**dict.fromkeys(("div", "div_", "divide", "true_divide", "truediv", "__truediv__", "__itruediv__"), 1),
              "__rtruediv__": 0, "__rdiv__": 0, "addcdiv": 2, "addcdiv_": 2}

# Operations whose result does not carry the values of (some of) their operands:
_METADATA = {"size", "dim", "ndimension", "numel", "nelement", "get_device", "stride", "element_size",
             "is_floating_point", "is_complex", "is_contiguous", "data_ptr", "storage_offset"}  # none of them
_METADATA_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}  # x.shape ...
_FRESH = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like", "new",
          "new_tensor", "new_ones", "new_zeros", "new_full", "new_empty", "zero_", "fill_", "normal_", "uniform_",
          "random_", "bernoulli_", "exponential_"}  # not the first one's (its shape, dtype; values overwritten)
_AS = {"type_as", "expand_as", "view_as", "reshape_as", "to"}  # only the first one's (the others: shape, dtype)


def _operands(name: str, args: tuple | list, kwargs: dict) -> list:
    """The operands, in order and lists flattened, whose values the result of the operation
    ``name(*args, **kwargs)`` is computed from (``x.type_as(y)``: ``x`` alone; ``x.size()``: none)."""
    if name in _METADATA or (name == "type" and len(args) + len(kwargs) == 1) or (
            name == "getattr" and len(args) > 1 and args[1] in _METADATA_ATTRS):
        return []
    if name in _FRESH:
        args, kwargs = args[1:], {k: v for k, v in kwargs.items() if k not in ("input", "self")}
    elif name in _AS:
        args, kwargs = args[:1], {}
    flat: list = []
    for a in (*args, *kwargs.values()):
        flat.extend(a if isinstance(a, (list, tuple)) else (a,))
    return flat


def _product_of_inputs(name: str, computed: list[bool]) -> str | None:
    """What makes an operation non-linear, given which of its :func:`_operands` are computed from the input."""
    if name in _PRODUCTS:
        factors = _PRODUCTS[name]
        if sum(c for i, c in enumerate(computed) if factors is None or i in factors) >= 2:
            return f"{name}, a product of two values computed from the input"
    elif name in _QUOTIENTS and len(computed) > _QUOTIENTS[name] and computed[_QUOTIENTS[name]]:
        return f"{name}, a division by a value computed from the input"
    elif name in ("lerp", "lerp_") and len(computed) > 2 and computed[2] and (computed[0] or computed[1]):
        return f"{name}, a product of two values computed from the input (its weight and an end)"
    elif name == "grid_sample" and len(computed) > 1 and computed[1]:
        return f"{name}, sampling at positions computed from the input"
    return None


def _finding(name: str, computed: list[bool], operands: list) -> tuple[str, str] | None:
    """``("activation" | "non-linear", what)`` when an operation on values computed from the input
    (``computed``: which of its :func:`_operands` are) is one the converter refuses, else None.
    An in-place form (``exp_``, ``F.elu_``) is its operation's; ``x != x`` (a NaN test) is no mask."""
    product = _product_of_inputs(name, computed)
    if product is not None:
        return "non-linear", product
    base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
    if base in _ACTIVATION_NAMES:
        return "activation", name
    if base in _COMPARISONS and len(operands) >= 2 and operands[0] is operands[1]:
        return None
    if base in _NONLINEAR_NAMES or base in _COMPARISONS:
        return "non-linear", name
    return None


def _in_place(name: str, kwargs: dict) -> bool:
    """Whether the operation writes into its first operand (or ``out=``) rather than only returning a value."""
    return (name.endswith("_") and not name.endswith("__")) or name in ("__setitem__", "setitem") or (
        name.startswith("__i") and name not in ("__index__", "__int__", "__invert__")) or (
        kwargs.get("inplace") is True or kwargs.get("out") is not None)


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


def library_packages() -> frozenset[str]:
    """``torch`` and the packages whose layers the registered backends declare as their own
    (:attr:`Backend.layer_packages`)."""
    from .backends.registry import layer_packages  # (the backends import this module)

    return frozenset({"torch"}) | layer_packages()


def _library_layer(m: nn.Module, packages: frozenset[str]) -> bool:
    """A torch.nn layer whose ``forward`` is a library's own (torch's, or of a package in
    ``packages``: :func:`library_packages`): checked as a module. A subclass with a ``forward``
    of its own is checked like any code."""
    return _is_torch_layer(m) and type(m).forward.__module__.split(".")[0] in packages


class _Tracer(torch.fx.Tracer):
    """fx tracer that keeps constraint activations and torch layers (subclasses too) whole: their
    own forward (relu in a constraint, max pooling in a MaxPool) is checked as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.packages = library_packages()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Activation) or _library_layer(m, self.packages) or super().is_leaf_module(m, qualname)


Findings = list[tuple[str, str]]
"""``[(module path, what)]``: where each finding is (the module whose ``forward`` does it) and what it is."""


def _scan(net: nn.Module) -> tuple[Findings, Findings] | None:
    """``(functional activations and reused activation modules, non-linear operations)`` in
    ``net``'s forward code, by tracing with ``torch.fx``; None when it cannot be traced.

    Only operations on values computed from the input (the first argument, and any other without
    a default) whose result reaches the output, or that write into a tensor (``h.relu_()``,
    ``out=``), count: the rest is a constant of the network."""
    try:
        graph = _Tracer().trace(net)
    except Exception:  # noqa: BLE001 - any tracing failure means "could not check statically"
        return None
    def name_of(node: torch.fx.Node) -> str:
        return node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))

    live: set[torch.fx.Node] = set()  # nodes the output is computed from (or that write into a tensor)
    todo = [n for n in graph.nodes if n.op == "output" or (
        n.op in ("call_function", "call_method") and _in_place(name_of(n), n.kwargs))]
    while todo:
        node = todo.pop()
        if node not in live:
            live.add(node)
            todo.extend(node.all_input_nodes)
    found, nonlinear, calls = [], [], {}
    depends: set[torch.fx.Node] = set()  # nodes whose value is computed from the input
    first = True
    for node in graph.nodes:
        if node.op == "placeholder":
            if first or not node.args:
                depends.add(node)
            first = False
            continue
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        if node.op == "get_attr" or node not in live:
            continue
        name = name_of(node)
        operands = _operands(name, node.args, node.kwargs)
        computed = [isinstance(a, torch.fx.Node) and a in depends for a in operands]
        if node.op == "call_module":
            computed = [a in depends for a in node.all_input_nodes]
        if not any(computed):
            continue  # computed from weights and numbers alone: a constant of the converted network
        depends.add(node)
        what = _finding(name, computed, operands) if node.op in ("call_function", "call_method") else None
        if what is None:
            continue
        if what[1] == name:  # say where the operation comes from
            where = "Tensor" if node.op == "call_method" else "F" if getattr(F, name, None) is node.target else (
                "operator" if getattr(node.target, "__module__", "") == "_operator" else "torch")
            what = (what[0], name if what[0] == "activation" and where != "Tensor" else f"{where}.{name}")
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack.values()))[0] if stack else ""
        (found if what[0] == "activation" else nonlinear).append((owner, what[1]))
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


def _tensors(value: object) -> list[Tensor]:
    """The tensors in a forward's result: a tensor, or lists, tuples, dicts and dataclasses of them."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    return [t for v in value for t in _tensors(v)] if isinstance(value, (list, tuple)) else []


def _same_storage(a: Tensor, b: Tensor) -> bool:
    """Whether two live tensors share memory (a view, ``.data``, ``detach()``)."""
    try:
        ptr = a.untyped_storage().data_ptr()
        return ptr != 0 and ptr == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def check_by_running(net: nn.Module, example: Tensor) -> tuple[Findings, Findings]:
    """Run ``net`` once and catch functional activations and reused activation modules, and
    non-linear operations (as :func:`find_nonlinear_operations`): ``(activations, non-linear)``.

    Each tensor computed from ``example`` carries the findings it was computed through (an
    operation writing into a tensor, through a view of it too, adds its own to it); those of
    the output are reported (an ``assert x.abs().max() < 1e6`` or a statistic logged on the
    side is not), or all of them when the output cannot be followed back to ``example`` (an
    operation the check does not see, such as a TorchScript function). Tensors are followed
    by weak reference: nothing is kept alive."""
    stack, calls = [""], {}
    names = {m: n for n, m in net.named_modules()}
    # id -> (weak reference, findings it was computed through) for the tensors computed from the input
    carried: dict[int, tuple[weakref.ref, frozenset]] = {id(example): (weakref.ref(example), frozenset())}
    aliases: dict[int, tuple[weakref.ref, weakref.ref]] = {}  # id -> (tensor, the tensor whose memory it shares)
    order: dict[tuple[str, str, str], int] = {}  # each finding: when it was first made

    def carries(a: object) -> frozenset | None:
        entry = carried.get(id(a)) if isinstance(a, Tensor) else None
        return entry[1] if entry is not None and entry[0]() is a else None

    def owners(t: Tensor) -> list[Tensor]:
        """``t`` and every tensor whose memory it is a view or alias of."""
        chain: list[Tensor] = []
        while isinstance(t, Tensor) and all(t is not c for c in chain):
            chain.append(t)
            entry = aliases.get(id(t))
            t = t._base if t._base is not None else (entry[1]() if entry is not None and entry[0]() is t else None)
        return chain

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            results = _tensors(out)
            first = args[0] if args and isinstance(args[0], Tensor) else None
            for o in results:
                if first is not None and o is not first and _same_storage(o, first):
                    aliases[id(o)] = (weakref.ref(o), weakref.ref(first))
            operands = _operands(name, args, kwargs)
            inputs = [carries(a) for a in operands]
            written = kwargs.get("out") if kwargs.get("out") is not None else first
            written = written if _in_place(name, kwargs) and isinstance(written, Tensor) else None
            if all(c is None for c in inputs):  # from weights and numbers alone: a constant
                if written is not None and name in _FRESH:
                    carried.pop(id(written), None)  # overwritten with one (zero_, fill_)
                return out
            what = _finding(name, [c is not None for c in inputs], operands)
            if what is not None:
                what = (stack[-1], *what)
                order.setdefault(what, len(order))
            findings = frozenset().union(*(c for c in inputs if c is not None), () if what is None else (what,))
            for i, o in enumerate(results):
                if o is not written:
                    own = inputs[i] if name == "broadcast_tensors" else findings  # one result per operand
                    if own is not None:
                        carried[id(o)] = (weakref.ref(o), own)
            if written is not None:  # it, and what it is a view of, now hold these values
                for o in owners(written):
                    kept = carries(o) if o is not written or name not in _FRESH else None
                    carried[id(o)] = (weakref.ref(o), findings | (kept or frozenset()))
            return out

    def pre(m, _):
        stack.append(names.get(m, ""))
        if is_activation(m):
            calls[names[m]] = calls.get(names[m], 0) + 1

    def post(m, _in, _out):
        stack.pop()

    hooked = [m for m in net.modules() if not isinstance(m, torch.jit.ScriptModule)]  # (no hooks there)
    handles = [m.register_forward_pre_hook(pre) for m in hooked] + [m.register_forward_hook(post) for m in hooked]
    try:
        with torch.no_grad(), Spy():
            output = net(example)
    finally:
        for h in handles:
            h.remove()
    traced = [carries(t) for t in _tensors(output)]
    reached = frozenset(order) if all(c is None for c in traced) else frozenset().union(*(c or () for c in traced))
    # the constraints' own forward uses relu/clamp internally: not a functional activation; the
    # layers the converter checks as modules (MaxPool, norms) run their own functionals
    packages = library_packages()
    skip = {names[m] for m in net.modules() if is_activation(m) or _library_layer(m, packages)}
    ordered = sorted((f for f in reached if f[0] not in skip), key=order.__getitem__)
    found = [(p, w) for p, kind, w in ordered if kind == "activation"]
    found += [(p, f"activation module called {n} times per forward") for p, n in calls.items() if n > 1]
    return found, [(p, w) for p, kind, w in ordered if kind == "non-linear"]
