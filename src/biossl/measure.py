"""Measuring a step: wall clock that waits for the device, and peak memory above a baseline.

Peak memory: on CUDA ``max_memory_allocated`` above the memory held at :func:`reset_peak`;
on the CPU the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
above the resident set at :func:`reset_peak`. On the CPU the resident set follows live
tensors only after :func:`rss_tracks_tensors` (large allocations served by mmap); without
it the allocator's cached heap hides a later, smaller peak.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_tracks_tensors() -> None:
    """Make glibc serve every allocation ≥ 128 KiB by mmap and unmap it when freed, so the
    resident set follows live tensor memory rather than the allocator's cached heap (without
    this a cell measured after a bigger one shows a peak of ~0). It slows steps (page
    faults) and cannot be undone for the process: switch it on only for a memory pass,
    after any timing."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed
    except (OSError, AttributeError):
        pass


def _trim_heap() -> None:
    """Hand the allocator's free pages back to the OS, so the peak starts at live memory."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it includes that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    """Reset the peak counter; returns the current baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    _trim_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _proc_kb("VmRSS") * 1024


def peak_bytes(device: torch.device) -> int:
    """The peak since the last :func:`reset_peak` (absolute: subtract its baseline)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _proc_kb("VmHWM") * 1024


def seconds_per_call(fn, n: int, device: torch.device) -> float:
    """Mean wall-clock seconds of ``n`` calls of ``fn()``, device work included."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t) / n


def step_flops(fn) -> int:
    """Floating-point operations of one call of ``fn``: matmuls and convolutions, forward and
    backward, counted with torch's FLOP formulas (``torch.utils.flop_counter``) as each op
    runs; element-wise work is not counted. (FlopCounterMode itself also tracks modules with
    backward hooks, which ``torch.autograd.grad`` on a leaf — DTP's top target — refuses.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Count():
        fn()
    return Count.total


def matmul_gflops(device: torch.device | str = "cpu", size: int | None = None, seconds: float = 0.5,
                  dtype: torch.dtype = torch.float32, clock=time.perf_counter) -> float:
    """This process's matmul throughput on ``device`` in ``dtype`` (GFLOP/s, size × size
    matrices; default 1024 on the CPU, 8192 on a GPU, which small ones leave idle): the
    ceiling a step's achieved GFLOP/s is compared with. ``clock``: seconds of which clock
    (``time.process_time``: per CPU-second, steadier on a shared machine)."""
    device = torch.device(device)
    size = size or (1024 if device.type == "cpu" else 8192)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = a @ b  # warm-up; then into c: a fresh output per call would time the allocator (after
    # bench's memory pass every large allocation is a fresh mmap, page-faulted in)
    n, t0 = 0, clock()
    sync(device)
    while clock() - t0 < seconds:
        torch.mm(a, b, out=c)
        n += 1
    sync(device)
    return 2 * size ** 3 * n / (clock() - t0) / 1e9
