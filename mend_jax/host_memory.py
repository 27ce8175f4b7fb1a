"""The host allocator under XLA's CPU buffers: give freed memory back to the system.

On the CPU backend XLA's buffers (parameters, the train state, each step's temporaries) are
the process's own malloc'd memory. Two things keep a training process's resident set above
its live buffers:
- XLA's compiler frees several hundred MiB of heap when it finishes, which glibc keeps.
  `malloc_trim` after each compilation (JAX reports every backend compile as a monitoring
  event, before the compiled step first runs) gives it back before the step's buffers arrive.
  This is `--host_memory=trim`, the default: it costs no measurable step or edit time.
- glibc serves an allocation above its mmap threshold from a mapping of its own, which `free`
  returns to the system, but after freeing one it raises the threshold to that allocation's
  size (up to 32 MiB). From then on a step's temporaries below that size come from the heap,
  where a freed block stays resident. Fixing the threshold keeps every large buffer in its own
  mapping, at the price of page faults on each fresh mapping: `--host_memory=lean` does this
  as well as the trims.
`keep` leaves the allocator alone. README "Benchmarks" measures what each saves and costs;
nothing here changes a number the steps compute.
"""
import ctypes
import ctypes.util
import functools
from typing import Optional

import jax

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
LEAN_MMAP_THRESHOLD = 2**20  # 1 MiB: the benchmark's best; 256 KiB slows the step by page faults
_trimming = False  # the compile listener is registered
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


def trim_after_compile() -> bool:
    """Release freed memory after every compilation, for the rest of the process (once, however
    often it is called). False without glibc, where nothing changes."""
    global _trimming
    if not _trimming and _glibc() is not None:
        jax.monitoring.register_event_duration_secs_listener(_release_after_compile)
        _trimming = True
    return _trimming


def lean() -> bool:
    """Fix the mmap threshold at 1 MiB and release freed memory after every compilation, for
    the rest of the process. False without glibc, where nothing changes."""
    return fix_mmap_threshold(LEAN_MMAP_THRESHOLD) and trim_after_compile()


MODES = ("trim", "lean", "keep")


def configure(mode: str) -> bool:
    """Apply a `--host_memory` mode (MODES; call it before the first buffer is allocated).
    False where the mode needs glibc and this process has another allocator."""
    if mode not in MODES:
        raise ValueError(f"host memory mode {mode!r}: one of {', '.join(MODES)}")
    return {"trim": trim_after_compile, "lean": lean, "keep": lambda: True}[mode]()
