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
