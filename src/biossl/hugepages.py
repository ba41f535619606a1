"""Large CPU tensors on transparent huge pages.

glibc serves every allocation above 32 MiB by a fresh mmap, so each big activation or
gradient of a step (GIM's 512 × 4095-frame maps are 67 MB) is page-faulted in 4 KiB at a
time, every step: ~130,000 faults and ~0.3 s of a ~3 s speech-cpc step at 512 channels,
and oneDNN's backward of the 4095-frame stage runs at 58 instead of 78 GFLOP/s. PyTorch's
CPU allocator aligns large tensors to 2 MiB and asks for huge pages (madvise) when
``THP_MEM_ALLOC_ENABLE`` is set; the kernel's 'madvise' THP mode (the common default) then
faults them in 2 MiB at a time. Values are unchanged; resident memory grows by at most
2 MiB per large tensor.
"""
from __future__ import annotations

import os

ENV = "THP_MEM_ALLOC_ENABLE"


def large_tensors_on_huge_pages() -> None:
    """Ask PyTorch's CPU allocator for huge pages, unless the environment says otherwise
    (``THP_MEM_ALLOC_ENABLE=0`` opts out). PyTorch reads the variable once, at the first
    CPU allocation: call this before any tensor exists (the command line does)."""
    os.environ.setdefault(ENV, "1")
