"""Meta-training on a device mesh (sharding.py, data_parallel.py, distributed.py).

The checks that need 8 devices live in tests/mesh_cases.py and run here in subprocesses
with 8 simulated CPU devices: XLA fixes the device count when JAX starts.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from mend_jax import config_lib, data_parallel, distributed, sharding
from mend_jax.config_checks import ConfigError, check_data_parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_case(*args, devices: int = 8, **env):
    environ = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
               "JAX_PLATFORMS": "cpu", **env}
    return subprocess.Popen([sys.executable, "-m", "tests.mesh_cases", *args], cwd=REPO, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout: int = 1500) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-6000:]
    return out


# ----- in this process: the mesh, the rules, the schedule --------------------------------

def test_mesh_sizes_resolve_minus_one_and_name_the_key_when_wrong():
    mesh = config_lib.base_config().mesh
    assert sharding.mesh_shape(mesh, 1) == (1, 1)
    mesh.data, mesh.fsdp = 2, -1
    assert sharding.mesh_shape(mesh, 8) == (2, 4)
    mesh.data, mesh.fsdp = 3, 2
    with pytest.raises(sharding.MeshError, match=r"mesh.data=3 x mesh.fsdp=2 = 6 devices, but the job has 8"):
        sharding.mesh_shape(mesh, 8)
    mesh.data, mesh.fsdp = -1, -1
    with pytest.raises(sharding.MeshError, match="both -1"):
        sharding.mesh_shape(mesh, 8)
    mesh.data, mesh.fsdp = 0, 1
    with pytest.raises(sharding.MeshError, match=r"mesh.data=0"):
        sharding.mesh_shape(mesh, 8)


def test_fsdp_rule_shards_the_largest_divisible_dimension_and_replicates_tiny_leaves():
    rules = ((r"state/stats/.*", "replicate"), (".*", "fsdp"))
    spec = lambda name, shape, fsdp=4, min_size=16: tuple(sharding.leaf_spec(name, shape, rules, fsdp, min_size))
    assert spec("base/h/0/mlp/c_fc/kernel", (768, 3072)) == (None, "fsdp")
    assert spec("base/wte/embedding", (50257, 768)) == (None, "fsdp")  # 50257 is not a multiple of 4
    assert spec("base/wpe/embedding", (1024, 768)) == ("fsdp", None)  # ties: the first
    assert spec("base/h/0/ln/scale", (6,)) == ()  # tiny
    assert spec("base/h/0/mlp/c_fc/bias", (18,)) == ()  # no dimension divides
    assert spec("state/stats/768x3072/x/mean", (768,)) == ()  # the first matching rule wins
    assert spec("base/h/0/mlp/c_fc/kernel", (768, 3072), fsdp=1) == ()
    with pytest.raises(sharding.MeshError, match=r"sharding.rules\[0\]"):
        sharding.check_rules(((".*", "tensor"),))


def test_data_parallel_groups_end_where_the_sequential_windows_do():
    # accumulate_bs 4 on 2 devices: batch 0 alone (the first window has one batch more), then pairs.
    groups, step = [], 0
    while step < 11:
        groups.append(data_parallel.group(step, 2, 11))
        step = groups[-1][-1] + 1
    assert groups == [[0], [1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert data_parallel.group(5, 4, 100) == [5, 6, 7, 8]  # a run resumed mid-window rejoins the grid
    assert data_parallel.group(8, 4, 100) == [8]
    assert data_parallel.padded([5, 6], 4) == [5, 6, 5, 5]
    c = config_lib.base_config()
    c.accumulate_bs, c.log_interval, c.val_interval = 8, 100, 5000
    check_data_parallel(c, 4)
    with pytest.raises(ConfigError, match=r"--config.log_interval=100: must be a multiple of the mesh's data axis"):
        check_data_parallel(c, 8)


def test_multi_process_environments_are_detected():
    assert not distributed.looks_multi_process({})
    assert not distributed.looks_multi_process({"SLURM_STEP_NUM_TASKS": "1"})
    assert not distributed.looks_multi_process({"SLURM_NTASKS": "16"})  # an allocation's shell, not srun's tasks
    assert distributed.looks_multi_process({"SLURM_STEP_NUM_TASKS": "16"})
    assert distributed.looks_multi_process({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert not distributed.looks_multi_process({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert not distributed.initialize("off")
    with pytest.raises(ValueError, match="--distributed='maybe'"):
        distributed.initialize("maybe")


def test_the_cli_rejects_a_mesh_the_devices_cannot_hold(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mend_jax.train", "--config=configs/gen.py", "--config.mesh.data=3",
         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2 and "error: mesh.data=3 x mesh.fsdp=1 = 3 devices, but the job has 1" in out.stderr


# ----- on 8 simulated devices ------------------------------------------------------------

def test_sharded_step_equals_sequential_steps_gpt2_mend():
    """MEND's statistics make each batch of a window depend on the ones before it. CI runs the
    2 x 4 mesh, which shards over both axes; the slow test below runs every mesh."""
    out = finish(run_case("equivalence", "gpt2", "mend", "2x4"))
    assert "gpt2 mend mesh 2x4: equal" in out


def test_fsdp_holds_a_shard_of_each_leaf_per_device_in_the_compiled_step():
    out = finish(run_case("memory", "gpt2"))
    assert "memory falls with fsdp" in out


def test_a_step_compiled_from_abstract_shapes_allocates_nothing_and_needs_the_real_steps_memory():
    """What benchmarks/memory_plan.py relies on, on a tiny Llama sharded over 8 devices."""
    out = finish(run_case("abstract_plan"))
    assert "abstract plan equals the real step" in out


@pytest.mark.slow
@pytest.mark.parametrize("model,alg", [("gpt2", "mend"), ("gpt2", "enn"), ("t5", "mend"), ("t5", "enn")])
def test_sharded_step_equals_sequential_steps_on_every_mesh(model, alg):
    out = finish(run_case("equivalence", model, alg, "8x1,4x2,2x4,1x8"))
    for mesh in ("8x1", "4x2", "2x4", "1x8"):
        assert f"{model} {alg} mesh {mesh}: equal" in out


@pytest.mark.slow
def test_checkpoint_of_one_mesh_restores_on_others_and_takes_the_same_next_steps():
    assert "checkpoint across meshes: equal" in finish(run_case("checkpoint_across_meshes", "gpt2", "mend"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def editor_weights(workdir):
    return load_file(os.path.join(workdir, "editor", "editor.safetensors"))


def results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)["results"]


@pytest.mark.slow
def test_two_processes_on_localhost_train_the_editor_one_process_does(tmp_path):
    """jax.distributed over a 127.0.0.1 coordinator with CPU collectives: 2 processes x 4 devices
    on a (2, 4) mesh, each process building only its own batch of each step."""
    port = free_port()
    multi = [run_case("train", str(tmp_path / "data"), str(tmp_path / "multi"), "2", "4",
                      f"127.0.0.1:{port}", "2", str(i), devices=4) for i in range(2)]
    single = run_case("train", str(tmp_path / "data1"), str(tmp_path / "single"), "1", "1", devices=1)
    outs = [finish(p) for p in multi + [single]]
    assert "process 0 of 2: 8 devices" in outs[0] and "process 1 of 2: 8 devices" in outs[1]
    got, want = editor_weights(tmp_path / "multi"), editor_weights(tmp_path / "single")
    assert sorted(got) == sorted(want)
    for name in want:  # two Adam updates: lr-scaled tolerance (tests/mesh_cases.py)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    r_got, r_want = results(tmp_path / "multi"), results(tmp_path / "single")
    for key in ("edit/acc_val", "loss/total_edit_val", "perplexity/post_val", "n_edits_evaluated_val"):
        assert r_got[key] == pytest.approx(r_want[key], rel=1e-4), key


def train_cli(workdir, *overrides, devices: int = 1):
    environ = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "mend_jax.train", "--config=configs/gen.py:world_small", "--config.max_iters=41",
         "--config.val_interval=20", "--config.log_interval=10", "--config.checkpoint_interval=20",
         f"--workdir={workdir}", *overrides],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=3000,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return results(workdir)


@pytest.mark.slow
def test_the_main_command_on_a_2x4_mesh_ends_with_the_one_device_metrics(tmp_path):
    """--config.mesh.data=2 --config.mesh.fsdp=4 on 8 simulated devices, the small world, 4 updates."""
    want = train_cli(tmp_path / "one")  # first: it builds the small world if the cache lacks it
    got = train_cli(tmp_path / "mesh", "--config.mesh.data=2", "--config.mesh.fsdp=4", devices=8)
    assert got["n_edits_evaluated_val"] == want["n_edits_evaluated_val"]
    for key in ("edit/acc_val", "loss/total_edit_val", "loss/edit_val", "loss/loc_val", "perplexity/post_val",
                "drawdown_val"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
