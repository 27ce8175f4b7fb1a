"""mend_jax/host_memory.py: train.py's --host_memory (trim, lean, keep)."""
import os
import subprocess
import sys
import textwrap

import pytest

from mend_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mmap_threshold_above_glibcs_limit_is_refused():
    with pytest.raises(ValueError, match="at most 32 MiB"):
        host_memory.fix_mmap_threshold(33 * 2**20)
    assert host_memory.fix_mmap_threshold(0) is False  # 0 leaves the adaptive threshold alone


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="one of trim, lean, keep"):
        host_memory.configure("default")


@pytest.mark.parametrize("mode", host_memory.MODES)
def test_each_mode_releases_freed_memory_after_each_compilation_or_not_and_changes_no_number(mode):
    # In a subprocess: a mode changes the allocator for the rest of the process.
    script = textwrap.dedent("""
        import sys
        import jax, jax.numpy as jnp, numpy as np
        from mend_jax import host_memory
        f = lambda x, y: (jnp.tanh(x @ y).sum(0), x.mean())
        rng = np.random.default_rng(0)
        x, y = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((64, 32), (32, 16)))
        want = jax.device_get(jax.jit(f)(x, y))
        compiled, releases = [], []
        jax.monitoring.register_event_duration_secs_listener(
            lambda event, _, **kw: compiled.append(kw.get("fun_name")) if event.endswith("backend_compile_duration") else None)
        real = host_memory.release_freed
        host_memory.release_freed = lambda: releases.append(1) or real()
        mode = sys.argv[1]
        assert host_memory.configure(mode) and host_memory.configure(mode), "glibc refused the mode"
        compiled.clear()
        jitted = jax.jit(lambda x, y: f(x, y))
        for _ in range(3):
            got = jax.device_get(jitted(x, y))
        assert compiled.count("jit(<lambda>)") == 1, compiled
        jitted(x[:8], y)  # a new shape compiles again
        assert compiled.count("jit(<lambda>)") == 2, compiled
        # A release per compilation (configured twice adds none), and none where the allocator is kept.
        assert len(releases) == (0 if mode == "keep" else len(compiled)), (releases, compiled)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script, mode], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("mode, environ, want", [
    ("madvise", {"HOME": "/h"}, {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    ("madvise", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
     {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}),
    ("madvise", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, None),  # the user's choice stands
    ("always", {}, None),  # the kernel gives them unasked
    ("never", {}, None),
    (None, {}, None),  # no THP setting to read
])
def test_huge_pages_are_asked_for_only_where_the_kernel_wants_a_request(mode, environ, want):
    assert host_memory.huge_pages_environment(environ, mode) == want


def test_thp_mode_reads_the_bracketed_setting(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert host_memory.thp_mode(str(setting)) == "madvise"
    assert host_memory.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(host_memory.thp_mode() != "madvise" or (host_memory.glibc_version() or (0, 0)) < (2, 35),
                    reason="needs glibc 2.35+ and the kernel's THP mode madvise")
def test_use_huge_pages_runs_the_program_again_and_its_buffers_get_huge_pages():
    # In a subprocess: use_huge_pages replaces the running program.
    script = textwrap.dedent("""
        import os, sys
        from mend_jax import host_memory
        print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
        assert host_memory.use_huge_pages()
        import jax.numpy as jnp
        x = jnp.ones((64, 2**20), jnp.float32) + 1  # a 256 MiB buffer of XLA's
        x.block_until_ready()
        with open("/proc/self/smaps_rollup") as f:
            huge = [int(line.split()[1]) for line in f if line.startswith("AnonHugePages:")][0]
        print("huge KiB", huge)
    """)
    out = subprocess.run([sys.executable, "-c", script, "arg"], cwd=REPO, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"})
    assert out.returncode == 0, out.stderr[-3000:]
    first, second, huge = out.stdout.strip().splitlines()
    assert first.split()[1] == second.split()[1]  # the same process, run again
    assert first.split()[2:] == ["None", "['arg']"]
    assert second.split()[2:] == ["glibc.malloc.hugetlb=1", "['arg']"]
    assert int(huge.split()[-1]) >= 128 * 1024  # at least half the buffer is in 2 MiB pages
