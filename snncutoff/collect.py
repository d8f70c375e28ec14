"""``collect_trace``: run a spiking network over a data set once and keep what it said.

For every batch: encode the input into a ``[T, N, ...]`` sequence, reset the network,
run the T steps through the backend (multi-step call or step loop), and keep the
per-step outputs; the :class:`~snncutoff.Trace` accumulates them. With
``count_ops=True`` the per-sample operations of each step are recorded too
(:mod:`snncutoff.record`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ._progress import progress as progress_bar
from .backends import resolve
from .backends.base import LoopsOverTimeError
from .summary import TraceSummary, check_summary_classes, summarize
from .trace import Trace, cumulative
from .validation import INPUT_HINT, batch_labels, check_choice, check_device, check_finite, check_int, check_labels

Encoder = str | Callable[[Tensor, int], Tensor]
ENCODERS = ("direct", "frames", "time_major", "none")


def encode(x: Tensor, T: int, encoder: Encoder = "direct") -> Tensor:
    """Turn one input batch into a time-major sequence ``[T, N, ...]``.

    - ``"direct"``: a static batch ``[N, ...]`` repeated T times (direct encoding);
    - ``"frames"``: event frames ``[N, T, ...]`` as SpikingJelly's data loaders give them,
      transposed to ``[T, N, ...]`` (the first T frames are used);
    - ``"time_major"``: already ``[T, N, ...]``;
    - ``"none"``: the batch unchanged (a network whose ``forward`` encodes / loops itself);
    - a callable ``(x, T) -> [T, N, ...]``, e.g. Poisson rate coding
      ``lambda x, T: snntorch.spikegen.rate(x, num_steps=T)``.
    """
    T = check_int("T", T, 1)
    if not isinstance(x, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor batch, got {type(x).__name__}")
    if callable(encoder):
        seq = encoder(x, T)
        if not isinstance(seq, Tensor) or seq.dim() < 2 or seq.shape[0] != T:
            got = tuple(seq.shape) if isinstance(seq, Tensor) else type(seq).__name__
            raise ValueError(f"the encoder must return a time-major [T, N, ...] = [{T}, N, ...] tensor, got {got}")
        return seq
    if encoder == "direct":
        return x.unsqueeze(0).expand(T, *x.shape)
    if encoder in ("frames", "time_major"):
        if x.dim() < 2:
            raise ValueError(f"encoder={encoder!r} takes [N, T, ...] (frames) or [T, N, ...] (time_major) batches, "
                             f"got shape {tuple(x.shape)}")
        seq = x.transpose(0, 1) if encoder == "frames" else x
        if seq.shape[0] < T:
            raise ValueError(f"encoder={encoder!r}: the data holds {seq.shape[0]} frames, fewer than T = {T}")
        return seq[:T]
    if encoder == "none":
        return x
    raise _unknown_encoder(encoder)


def _unknown_encoder(encoder: object) -> ValueError:
    return ValueError(
        f"encoder must be one of {', '.join(map(repr, ENCODERS))} or a callable (x [N, ...], T) -> [T, N, ...], "
        f"got {encoder!r}. Spike codings come from the frameworks: e.g. lambda x, T: snntorch.spikegen.rate(x, "
        "num_steps=T), or torch.stack([spikingjelly's encoding.PoissonEncoder()(x) for _ in range(T)]) (inputs in "
        "[0, 1]; snncutoff_bench.encoders.make builds the CLI's --encoder rate / poisson / latency)")


def _shape_advice(out: Tensor, T: int, whole: bool, name: str) -> str:
    """Why per-step outputs are not ``[T, N, C]``, and what to do."""
    got = f"the network's per-step outputs must be [T, N, C] = [{T}, N, C], got {list(out.shape)}"
    if whole and out.dim() == 2:
        return (f"{got}: {name} was run on whole sequences (multistep) and returned one [N, C] per sequence, "
                "probably an average over time (a firing rate) or the last step alone. Pass the module that "
                "returns every step (e.g. its inner nn.Sequential), or a network stepped one step at a time "
                "(multistep=False)")
    if whole:
        return f"{got}; check T, the encoder and the readout (multistep: the network returns every step itself)"
    return (f"{got}; check T, the encoder and the readout, or pass multistep=True (and encoder='none' if it "
            "encodes itself) for a network whose forward loops over time")


class _Batches:
    """The loader's batch indices this process runs (every one, outside ``torchrun``)."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    def __iter__(self):
        return iter(range(self.rank, 1 << 62, self.world))


def _shard(data: Iterable, distributed: bool | None) -> tuple[_Batches, Iterable]:
    """``(indices, batches)`` of the loader's batches this process runs."""
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed is False or not active:
        if distributed and not active:
            raise ValueError("distributed=True needs torch.distributed initialised with more than one process "
                             "(launch with torchrun --nproc_per_node K)")
        return _Batches(), data
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = _Batches(rank, world)
    if isinstance(data, DataLoader) and data.batch_sampler is not None:
        batches = list(data.batch_sampler)[rank::world]  # only these are loaded here
        loader = DataLoader(data.dataset, batch_sampler=batches, collate_fn=data.collate_fn,
                            num_workers=data.num_workers, pin_memory=data.pin_memory)
        return mine, loader
    return mine, (b for i, b in enumerate(data) if i % world == rank)


def _gather(mine: _Batches, outputs: list, labels: list, ops: list) -> tuple[list, list, list]:
    """Every rank's per-batch results, on every rank, back in the loader's batch order."""
    import torch.distributed as dist

    parts: list = [None] * mine.world
    dist.all_gather_object(parts, (outputs, labels, ops))
    order = []
    for rank, (o, y, p) in enumerate(parts):
        for j in range(len(o)):
            order.append((rank + j * mine.world, o[j], y[j], p[j] if p else None))
    order.sort(key=lambda item: item[0])
    return [o for _, o, _, _ in order], [y for _, _, y, _ in order], [p for _, _, _, p in order if p is not None]


def _split(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        for kx, ky in (("input", "label"), ("image", "label"), ("x", "y"), ("frames", "label")):
            if kx in batch and ky in batch:
                return batch[kx], batch[ky]
    raise TypeError("each batch must be an (inputs, labels) pair (or a dict with input/label keys)")


@torch.no_grad()
def collect_trace(
    backend: Any,
    net: nn.Module,
    data: Iterable,
    T: int,
    *,
    encoder: Encoder = "direct",
    readout: str | Callable = "auto",
    multistep: bool | None = None,
    count_ops: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    meta: dict | None = None,
    keep: str = "full",
    max_set_size: int = 1,
    distributed: bool | None = None,
) -> Trace | TraceSummary:
    """Run ``net`` for T steps on every batch of ``data`` and return the :class:`Trace`.

    Args:
        backend: a backend (``snncutoff.backends.get("spikingjelly")``) or its name.
        net: a converted network, or one the user wrote in that framework.
        data: iterable of ``(inputs, labels)`` batches (a ``DataLoader``).
        T: timesteps (>= 1).
        encoder: how inputs become ``[T, N, ...]`` (see :func:`encode`).
        readout: how the network's output becomes ``[N, C]`` per step (see
            :class:`snncutoff.backends.Backend`).
        multistep: ``True`` when ``net(x_seq)`` returns the whole ``[T, N, C]`` sequence
            (SpikingJelly multi-step mode is detected; an snnTorch module that loops
            over time in its ``forward`` needs ``True``); None detects.
        count_ops: also record per-step, per-sample operations into ``Trace.ops``.
        device: move inputs (and the network) there; None leaves both where they are.
        progress: show a tqdm bar on stderr.
        meta: stored in ``Trace.meta`` (with backend, T and encoder).
        keep: ``"full"`` (the cumulative outputs ``[T, N, C]``) or ``"summary"``: a
            :class:`~snncutoff.summary.TraceSummary` of the statistics every policy and the OCT
            read, built batch by batch in O(T N) memory (the same results; ``Conformal`` up to
            ``max_set_size``).
        distributed: under ``torchrun`` (``torch.distributed`` initialised with more than one
            process; None: whenever it is), each process runs every K-th batch of the loader and
            every process gets the whole trace, in the loader's order: the same trace, bit for
            bit, as one process (each batch is run as it is, so its arithmetic does not change).
    """
    backend = resolve(backend)
    T = check_int("T", T, 1)
    device = check_device(device)
    if isinstance(data, (Tensor, str)) or not hasattr(data, "__iter__"):
        raise TypeError(f"data must be an iterable of (inputs, labels) batches (a DataLoader), got "
                        f"{type(data).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    check_choice("keep", keep, ("full", "summary"))
    max_set_size = check_int("max_set_size", max_set_size, 1)
    if not callable(encoder) and encoder not in ENCODERS:
        raise _unknown_encoder(encoder)
    backend.check_network(net)
    whole = multistep if multistep is not None else backend.is_multistep(net)
    if device is not None:
        net = net.to(device)
    was_training = net.training
    net.eval()
    outputs, labels, ops = [], [], []
    classes = None
    mine, data = _shard(data, distributed)
    try:
        for i, batch in zip(mine, progress_bar(data, f"{backend.name} T={T}", progress)):
            x, y = _split(batch)
            if x.is_floating_point():
                check_finite(f"inputs of batch {i}", x, ("n",), INPUT_HINT)
            if device is not None:
                x = x.to(device)
            x_seq = encode(x, T, encoder)
            backend.reset(net)
            try:
                if count_ops:
                    with backend.record(net, multistep=whole, T=T) as rec:
                        out = backend.run(net, x_seq, readout, whole)
                else:
                    out = backend.run(net, x_seq, readout, whole)
            except LoopsOverTimeError:  # its own message says what to do
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # torch's shape errors vary
                hint = ""
                if whole and "readout" not in str(exc):  # (a readout's own message says what to do)
                    hint = (" A network run on whole sequences gets [T, N, ...] per call. If its forward makes "
                            "the time steps itself (x.unsqueeze(0).repeat(T, ...)), pass encoder='none' so it "
                            "gets the plain batch, or pass the inner module that takes [T, N, ...] (it must "
                            "return every step's output, not their mean). A forward that flattens with "
                            "x.view(x.size(0), -1) or torch.flatten(x, 1) treats T as the batch (use nn.Flatten "
                            "modules, or convert with step_mode='s').")
                raise ValueError(
                    f"running {type(net).__name__} on the encoded batch of shape {tuple(x_seq.shape)} "
                    f"(time-major [T, N, ...], encoder={encoder!r}, multistep={whole}) failed: {exc}.{hint}"
                ) from exc
            if count_ops:
                batch_ops = rec.ops()
                if batch_ops is None:
                    raise ValueError("count_ops=True but the network has no Conv/Linear layer to count")
                ops.append(batch_ops.cpu())
            if not isinstance(out, Tensor):
                raise ValueError(f"the readout ({readout!r}) turned {type(net).__name__}'s output into a "
                                 f"{type(out).__name__}, not a tensor of per-step outputs")
            if out.dim() != 3 or out.shape[0] != T:
                raise ValueError(_shape_advice(out, T, whole, type(net).__name__))
            labels.append(batch_labels(y, out.shape[1]))
            if classes is not None and out.shape[2] != classes:
                raise ValueError(f"batch {i} gave {out.shape[2]} classes after {classes}: the network's outputs "
                                 "must keep their [N, C] shape")
            classes = out.shape[2]
            if keep == "full":
                outputs.append(out.float().cpu())
            else:  # the batch's statistics only: its outputs are dropped here (checked as a Trace checks them)
                check_summary_classes(classes)
                cum = cumulative(out.float().cpu())
                check_finite(f"the cumulative outputs of batch {i}", cum)
                outputs.append(summarize(cum, check_labels(labels[-1], cum.shape[1], classes), max_set_size))
    finally:
        backend.reset(net)
        net.train(was_training)
    if mine.world > 1:  # every rank gets every batch's results, in the loader's order
        outputs, labels, ops = _gather(mine, outputs, labels, ops)
    if not outputs:
        raise ValueError("data yielded no batch")
    info = {"backend": backend.name, "T": T, "encoder": encoder if isinstance(encoder, str) else "callable"}
    if keep == "summary":
        stats = {k: torch.cat([o[k] for o in outputs], dim=1) for k in outputs[0]}
        return TraceSummary(stats, torch.cat(labels), classes, torch.cat(ops, dim=1) if ops else None,
                            {**info, **(meta or {})})
    return Trace.from_steps(
        torch.cat(outputs, dim=1), torch.cat(labels).long(), torch.cat(ops, dim=1) if ops else None,
        {**info, **(meta or {})},
    )
