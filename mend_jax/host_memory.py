"""The host allocator under XLA's CPU buffers: give freed step buffers back to the system.

On the CPU backend XLA's buffers (parameters, the train state, each step's temporaries) are
the process's own malloc'd memory. glibc serves an allocation above its mmap threshold from a
mapping of its own, which `free` returns to the system, but after freeing one it raises the
threshold to that allocation's size (up to 32 MiB). From then on a step's temporaries below
that size come from the heap, where a freed block stays in the resident set, so a training
process holds several hundred MiB more than its live buffers. Fixing the threshold keeps every
large buffer in its own mapping. XLA's compiler also leaves freed heap behind; `malloc_trim`
after each compilation (JAX reports every backend compile as a monitoring event, before the
compiled step first runs) gives that back before the step's buffers arrive.

`lean()` does both for the rest of the process (train.py's `--host_memory=lean`,
`benchmarks/bench_mend.py --host_memory lean`; README "Benchmarks" measures what it saves and
costs). Nothing here changes a number the steps compute.
"""
import ctypes
import ctypes.util
import functools
from typing import Optional

import jax

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
LEAN_MMAP_THRESHOLD = 2**20  # 1 MiB: the benchmark's best; 256 KiB slows the step by page faults
_lean = False
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def fix_mmap_threshold(nbytes: int) -> bool:
    """Serve every allocation of at least `nbytes` from its own mapping, for the rest of the
    process (0: leave glibc's adaptive threshold). True when the allocator took the setting;
    False without glibc, where nothing changes."""
    if nbytes <= 0:
        return False
    if nbytes > 32 * 2**20:
        raise ValueError(f"mmap threshold {nbytes} B: glibc accepts at most 32 MiB")
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)) == 1)


def release_freed() -> bool:
    """Give the heap's free pages back to the system (glibc's malloc_trim); False without glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def _release_after_compile(event: str, duration: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
        release_freed()


def lean() -> bool:
    """Fix the mmap threshold at 1 MiB and release freed memory after every compilation, for
    the rest of the process. False without glibc, where nothing changes."""
    global _lean
    if not _lean and fix_mmap_threshold(LEAN_MMAP_THRESHOLD):
        jax.monitoring.register_event_duration_secs_listener(_release_after_compile)
        _lean = True
    return _lean
