"""Peak memory of the analyses of a large trace, each variant in a fresh process (peak RSS is per process).

Variants, on a synthetic trace of ``T x N x C`` float32 cumulative outputs:

- ``memory``: the outputs in memory; ``Trace(outputs, labels)``, the OCT, ``TopKGap(0)``,
  ``Conformal(0.1)`` and ``Confidence(0.01)`` fit and evaluated on it;
- ``mmap``: the same trace saved, then ``Trace.load(path, mmap=True)`` and the same analyses
  (the file's pages are read as needed, and count in RSS while they are mapped);
- ``summary``: the ``TraceSummary`` of the trace (its bytes per sample and step) and the same
  analyses on it (the peak includes building the full trace first);
- ``reference``: TopKGap's fit + evaluate on an in-memory T=64, N=50 000, C=100 trace (the
  ``core-speed`` case), whatever ``T, N, C`` are: its time per element is the baseline against
  which the large trace's TopKGap time per element is read, in the same run.

The figure is the process's peak resident memory over the trace's bytes (the process starts
at about 0.25 GB with torch loaded). The trace is written under ``folder`` for ``mmap``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time, torch
import snncutoff as sc
T, N, C, what, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
nbytes = T * N * C * 4
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if what == "save":
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (N,), generator=g)
    out = torch.randn(T, N, C, generator=g)
    out[:, torch.arange(N), labels] += 0.35
    sc.Trace(out.cumsum_(0), labels).save(path)
    print(json.dumps({"saved": path}))
    sys.exit()
if what == "reference":
    T, N, C = 64, 50_000, 100
    nbytes = T * N * C * 4
t0 = time.perf_counter()
if what == "mmap":
    trace = sc.Trace.load(path, mmap=True)
else:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (N,), generator=g)
    out = torch.randn(T, N, C, generator=g)
    out[:, torch.arange(N), labels] += 0.35
    out.cumsum_(0)
    before = peak()
    trace = sc.Trace(out, labels)
    if what == "summary":
        trace = trace.summary()
        del out
t1 = time.perf_counter()
sc.optimal_cutoff(trace)
k0 = time.perf_counter()
sc.TopKGap(0.0).fit(trace).evaluate(trace)
k1 = time.perf_counter()
if what != "reference":
    sc.Conformal(0.1).fit(trace).evaluate(trace)
    sc.Confidence(0.01).evaluate(trace)
t2 = time.perf_counter()
extra = {}
if what == "summary":
    kept = sum(v.numel() * v.element_size() for v in trace.statistics.values()) + trace.labels.numel() * 8
    extra = {"summary_bytes": kept, "summary_bytes_per_sample_step": kept / (T * N)}
print(json.dumps({"variant": what, "trace_bytes": nbytes, "peak_rss": peak(), "peak_over_trace": peak() / nbytes,
                  "load_or_construct_s": t1 - t0, "analyses_s": t2 - t1, "topk_s": k1 - k0,
                  "topk_ns_per_element": (k1 - k0) / (T * N * C) * 1e9, **extra}))
"""


def measure(T: int, N: int, C: int, folder: Path,
            variants: tuple[str, ...] = ("memory", "mmap", "summary", "reference"),
            python: str = sys.executable) -> dict:
    """Peak RSS of each variant, each in its own process (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / f"trace-{T}x{N}x{C}.pt")
    results = {"T": T, "N": N, "C": C, "trace_gb": T * N * C * 4 / 1e9, "variants": {}}
    if "mmap" in variants and not Path(path).exists():
        subprocess.run([python, "-c", _CHILD, str(T), str(N), str(C), "save", path], check=True, capture_output=True)
    for what in variants:
        res = subprocess.run([python, "-c", _CHILD, str(T), str(N), str(C), what, path], capture_output=True,
                             text=True)
        if res.returncode != 0:
            results["variants"][what] = {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
            continue
        results["variants"][what] = json.loads(res.stdout.strip().splitlines()[-1])
    return results
