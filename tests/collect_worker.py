"""Run under torchrun by test_collect_trace_across_processes: each rank collects its share, gets all."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import snncutoff as sc
from snncutoff import constraints, data, models

out = Path(sys.argv[1])
dist.init_process_group("gloo")
torch.set_num_threads(1)
torch.manual_seed(0)
ann = constraints.apply(models.get("cnn"), "qcfs", levels=8, threshold=2.0).eval()
backend = sc.backends.get("spikingjelly")
snn = backend.convert(ann)
_, test = data.digits().loaders(batch_size=64)
trace = sc.collect_trace(backend, snn, test, T=6, count_ops=True, progress=False)
summary = sc.collect_trace(backend, snn, test, T=6, progress=False, keep="summary")
torch.save({"outputs": trace.outputs, "labels": trace.labels, "ops": trace.ops,
            "gaps": summary.gaps()}, out / f"rank{dist.get_rank()}.pt")
dist.barrier()
dist.destroy_process_group()
