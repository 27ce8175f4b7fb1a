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

Separately, `use_huge_pages` (train.py's `--huge_pages`, on by default) backs those buffers
with transparent huge pages where the kernel gives them on request (THP mode "madvise", the
usual default): a buffer of 2 MiB pages faults in 512 times less often and needs 512 times
fewer TLB entries, which shortened MEND's step by 3-12% on 2 cores (README). glibc (2.35 and later)
asks for them with its `glibc.malloc.hugetlb=1` tunable, which it reads at start-up only, so
the process runs itself again, once, with the tunable set.
"""
import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Dict, Mapping, Optional

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


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_SETTING) -> Optional[str]:
    """The kernel's transparent huge page mode (always, madvise or never); None where unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_pages_environment(environ: Mapping[str, str], mode: Optional[str]) -> Optional[Dict[str, str]]:
    """The environment that asks glibc for huge pages, or None when there is nothing to ask: the
    kernel gives them only on request in mode "madvise" ("always" needs no request, "never"
    ignores it), and a GLIBC_TUNABLES that already sets the tunable is the user's choice."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if mode != "madvise" or HUGE_PAGES_TUNABLE + "=" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES_TUNABLE + "=1"]))}


def glibc_version() -> Optional[tuple]:
    """(major, minor) of the process's glibc; None without glibc."""
    libc = _glibc()
    if libc is None:
        return None
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return tuple(int(part) for part in libc.gnu_get_libc_version().decode().split(".")[:2])


def use_huge_pages() -> bool:
    """Back the process's large buffers with transparent huge pages: where they must be asked
    for, run this program again (execve: the same process id and arguments, the environment
    plus the glibc tunable) and never return. Call it first thing, before anything is printed
    or allocated. Whether the buffers get huge pages: False where glibc (before 2.35) or the
    kernel has none to give, or GLIBC_TUNABLES turns them off."""
    version, mode = glibc_version(), thp_mode()
    if version is None or version < (2, 35) or not sys.executable:
        return mode == "always"
    environment = huge_pages_environment(os.environ, mode)
    if environment is None:
        tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
        return mode == "always" or (mode == "madvise" and HUGE_PAGES_TUNABLE + "=0" not in tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], environment)
