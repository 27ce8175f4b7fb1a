"""launch/tpu_pod.sh and launch/slurm.sh (and launch/common.sh, which both source): their --dry-run
output, their checks, and the commands they generate run against stand-in gcloud, sbatch, srun and
python executables."""
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TPU = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "slurm.sh"
COMMON = ROOT / "launch" / "common.sh"  # sourced by both
GPU_ROWS = ROOT / "benchmarks" / "gpu_rows.sh"  # the benchmark's accelerator rows
SPACED = "--config.note=two words's"  # a train argument with a space and a quote
TPU_OPTS = ["--name", "mend-v4", "--zone", "us-central2-b", "--accelerator-type", "v4-32"]
TRAIN = ["--config=configs/gen.py", "--config.mesh.data=-1", SPACED]
END = "MEND_JAX_SBATCH"


def run(script, *args, env=None, input=None):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, input=input,
                          timeout=60)


def commands(stdout):
    """The "+ " lines of a dry run, each split into words."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote(words):
    """The --command=... of a gcloud ssh command."""
    (command,) = [w[len("--command="):] for w in words if w.startswith("--command=")]
    return command


def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def path_with(bin_dir):
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


# --- TPU pod -----------------------------------------------------------------


def tpu_dry_run(*opts, train=TRAIN):
    result = run(TPU, *TPU_OPTS, *opts, "--dry-run", "--", *train)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tpu_dry_run_describe_or_create():
    out = tpu_dry_run("--project", "my-proj")
    first = out.splitlines()[0]
    assert first.startswith("+ gcloud compute tpus tpu-vm describe mend-v4 ")
    describe, create = (shlex.split(part) for part in first[2:].split(" || "))
    assert describe[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"]
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "mend-v4"]
    for words in (describe, create):
        assert "--zone=us-central2-b" in words and "--project=my-proj" in words
    assert "--accelerator-type=v4-32" in create and "--version=tpu-ubuntu2204-base" in create


@pytest.mark.parametrize("accelerator, version", [("v6e-16", "v2-alpha-tpuv6e"), ("v5p-32", "v2-alpha-tpuv5"),
                                                  ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v3-32", "tpu-ubuntu2204-base")])
def test_tpu_default_runtime_by_generation(accelerator, version):
    out = tpu_dry_run("--accelerator-type", accelerator)
    assert f"--version={version}" in out.splitlines()[0]
    assert "--version=custom-rt" in tpu_dry_run("--accelerator-type", accelerator, "--version", "custom-rt")


def test_tpu_dry_run_setup_and_train_on_all_workers():
    setup, start = commands(tpu_dry_run("--branch", "dev", "--repo", "https://example.com/r.git"))[1:]
    for words in (setup, start):
        assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mend-v4"]
        assert "--zone=us-central2-b" in words and "--worker=all" in words
    assert "git clone --branch dev https://example.com/r.git" in remote(setup)
    assert 'pip install -q -e ".[tpu]"' in remote(setup)
    start_words = shlex.split(remote(start))
    i = start_words.index("mend_jax.train")
    assert start_words[i - 3:i + 2 + len(TRAIN)] == ["nohup", "python3", "-m", "mend_jax.train", "--distributed=on", *TRAIN]
    assert '> "$HOME/mend_jax_train.log"' in remote(start)  # expanded on the worker


def test_tpu_dry_run_prints_log_stop_and_delete():
    out = tpu_dry_run()
    text = out[out.index("Dry run: nothing ran"):]
    logs, stop, delete = [shlex.split(line) for line in text.splitlines() if line.startswith("  gcloud")]
    assert "--worker=0" in logs and remote(logs) == 'tail -f "$HOME/mend_jax_train.log"'
    assert "--worker=all" in stop and remote(stop) == 'kill "$(cat "$HOME/mend_jax_train.pid")"'
    assert delete[4:6] == ["delete", "mend-v4"]


@pytest.mark.parametrize("args, option", [
    (["--zone", "z", "--accelerator-type", "v4-32"], "--name"),
    (["--name", "n", "--accelerator-type", "v4-32"], "--zone"),
    (["--name", "n", "--zone", "z"], "--accelerator-type"),
    (["--name", "Bad_Name", "--zone", "z", "--accelerator-type", "v4-32"], "--name"),
    (["--name", "n", "--zone", "z", "--accelerator-type", "tpu32"], "--accelerator-type"),
    (["--name", "n", "--zone", "z", "--accelerator-type", "v4-32", "--nodes", "2"], "--nodes"),
    (["--name", "n", "--zone", "z", "--accelerator-type"], "--accelerator-type"),
])
def test_tpu_bad_options(args, option):
    result = run(TPU, *args, "--dry-run", "--", *TRAIN)
    assert result.returncode != 0 and option in result.stderr and not result.stdout


@pytest.mark.parametrize("train, message", [([], "--config"), (["--workdir=w"], "--config"),
                                            (["--config=configs/gen.py", "--distributed=off"], "--distributed")])
def test_tpu_bad_train_args(train, message):
    result = run(TPU, *TPU_OPTS, "--dry-run", "--", *train)
    assert result.returncode != 0 and message in result.stderr


def test_tpu_help():
    result = run(TPU, "--help")
    assert result.returncode == 0 and "Usage: launch/tpu_pod.sh" in result.stdout


def fake_gcloud(tmp_path, describe_state):
    """A gcloud that logs its arguments; describe prints `describe_state`, or fails when it is empty."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    executable(bin_dir / "gcloud", f"""#!/usr/bin/env bash
printf '%s\\n' "$*" >> {shlex.quote(str(log))}
if [[ $4 == describe ]]; then [[ -n {shlex.quote(describe_state)} ]] || exit 1; echo {shlex.quote(describe_state)}; fi
""")
    return path_with(bin_dir), log


@pytest.mark.parametrize("state, creates", [("", True), ("READY", False)])
def test_tpu_creates_or_reuses(tmp_path, state, creates):
    env, log = fake_gcloud(tmp_path, state)
    result = run(TPU, *TPU_OPTS, "--", *TRAIN, env=env)
    assert result.returncode == 0, result.stderr
    calls = [line.split()[3] for line in log.read_text().splitlines()]
    assert calls == ["describe"] + ["create"] * creates + ["ssh", "ssh"]
    assert ("Reusing TPU VM mend-v4" in result.stdout) != creates
    assert "Training started on all workers of mend-v4" in result.stdout


def test_tpu_refuses_slice_not_ready(tmp_path):
    env, log = fake_gcloud(tmp_path, "STOPPED")
    result = run(TPU, *TPU_OPTS, "--", *TRAIN, env=env)
    assert result.returncode != 0 and "STOPPED, not READY" in result.stderr and "tpu-vm start mend-v4" in result.stderr
    assert [line.split()[3] for line in log.read_text().splitlines()] == ["describe"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_tpu_worker_commands_run(tmp_path):
    """The setup and start commands, run by bash in a fake worker home: clone, then update,
    then the nohup'd train command gets the train arguments verbatim."""
    origin = tmp_path / "origin"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(origin)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir(), bin_dir.mkdir()
    executable(bin_dir / "python3", '#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> "$HOME/python3.args"\n')
    env = dict(path_with(bin_dir), HOME=str(home))
    setup, start = commands(tpu_dry_run("--repo", str(origin), "--branch", "main"))[1:]
    for _ in range(2):  # the second run takes the update branch
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "more"], check=True)
        subprocess.run(["bash", "-c", remote(setup)], env=env, check=True, capture_output=True)
        heads = [subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
                 for d in (origin, home / "mend-jax")]
        assert heads[0] == heads[1]
    assert (home / "python3.args").read_text().count("install") == 4
    (home / "python3.args").unlink()
    subprocess.run(["bash", "-c", remote(start)], env=env, check=True, timeout=30)
    pid = int((home / "mend_jax_train.pid").read_text())
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() and (home / "python3.args").exists():
            break
        subprocess.run(["sleep", "0.05"])
    assert (home / "python3.args").read_text().splitlines() == ["-m", "mend_jax.train", "--distributed=on", *TRAIN]
    assert (home / "mend_jax_train.log").exists()


# --- SLURM -------------------------------------------------------------------


def slurm_dry_run(*opts, train=TRAIN):
    result = run(SLURM, "--nodes", "2", "--gpus-per-node", "4", *opts, "--dry-run", "--", *train)
    assert result.returncode == 0, result.stderr
    return result.stdout


def job_script(stdout):
    """The generated batch script: the here-document of the printed sbatch command."""
    lines = stdout.splitlines()
    assert lines[0] == f"+ sbatch --parsable <<'{END}'"
    return "\n".join(lines[1:lines.index(END)]) + "\n"


def sbatch_lines(script):
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_slurm_per_gpu_header():
    script = job_script(slurm_dry_run("--partition", "gpu", "--time", "04:00:00", "--account", "acct",
                                      "--job-name", "edit1"))
    assert script.startswith("#!/usr/bin/env bash\n")
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=edit1", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:4",
        "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00", "#SBATCH --account=acct",
        f"#SBATCH --chdir={ROOT}", "#SBATCH --output=%x-%j.out"]


def test_slurm_per_node_header_and_defaults():
    script = job_script(slurm_dry_run("--per", "node"))
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=mend-jax", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:4",
        f"#SBATCH --chdir={ROOT}", "#SBATCH --output=%x-%j.out"]
    assert "CUDA_VISIBLE_DEVICES" not in script


def test_slurm_script_expands_slurm_variables_at_job_time():
    script = job_script(slurm_dry_run("--port", "23456"))
    assert '--num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID" "$@"' in script
    assert '--distributed=on --coordinator_address="$COORD"' in script
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
    assert 'CUDA_VISIBLE_DEVICES="$SLURM_LOCALID"' in script
    assert "PORT=23456" in script
    (args_line,) = [line for line in script.splitlines() if line.startswith("TRAIN_ARGS=(")]
    assert shlex.split(args_line[len("TRAIN_ARGS=("):-1]) == TRAIN


def test_slurm_venv(tmp_path):
    venv = tmp_path / "my env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    script = job_script(slurm_dry_run("--venv", str(venv)))
    (source,) = [line for line in script.splitlines() if line.startswith("source ")]
    assert shlex.split(source) == ["source", str(venv / "bin" / "activate")]


@pytest.mark.parametrize("args, option", [
    (["--gpus-per-node", "8"], "--nodes"),
    (["--nodes", "2"], "--gpus-per-node"),
    (["--nodes", "0", "--gpus-per-node", "8"], "--nodes"),
    (["--nodes", "2", "--gpus-per-node", "x"], "--gpus-per-node"),
    (["--nodes", "2", "--gpus-per-node", "8", "--per", "task"], "--per"),
    (["--nodes", "2", "--gpus-per-node", "8", "--port", "70000"], "--port"),
    (["--nodes", "2", "--gpus-per-node", "8", "--venv", "/nonexistent"], "--venv"),
    (["--nodes", "2", "--gpus-per-node", "8", "--time", "4 h"], "--time"),
    (["--nodes", "2", "--gpus-per-node", "8", "--zone", "z"], "--zone"),
    (["--nodes", "2", "--gpus-per-node"], "--gpus-per-node"),
])
def test_slurm_bad_options(args, option):
    result = run(SLURM, *args, "--dry-run", "--", *TRAIN)
    assert result.returncode != 0 and option in result.stderr and not result.stdout


@pytest.mark.parametrize("train, message", [([], "--config"),
                                            (["--config=configs/gen.py", "--process_id=3"], "--process_id")])
def test_slurm_bad_train_args(train, message):
    result = run(SLURM, "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--", *train)
    assert result.returncode != 0 and message in result.stderr


def test_slurm_help():
    result = run(SLURM, "--help")
    assert result.returncode == 0 and "Usage: launch/slurm.sh" in result.stdout


def fake_cluster(tmp_path, visible):
    """scontrol, srun (runs its command once per task, as SLURM would, with CUDA_VISIBLE_DEVICES
    from `visible(local_id)`, unset for None) and python (logs its arguments)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "tasks"
    bin_dir.mkdir(), log.mkdir()
    executable(bin_dir / "scontrol", "#!/usr/bin/env bash\nprintf 'node%s\\n' 1 2\n")
    cases = "\n".join(f"    {i}) {'unset CUDA_VISIBLE_DEVICES' if visible(i) is None else 'export CUDA_VISIBLE_DEVICES=' + visible(i)} ;;"
                      for i in range(4))
    executable(bin_dir / "srun", f"""#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done
for ((id = 0; id < SLURM_NNODES * SLURM_NTASKS_PER_NODE; id++)); do
  local_id=$((id % SLURM_NTASKS_PER_NODE))
  case $local_id in
{cases}
  esac
  SLURM_PROCID=$id SLURM_LOCALID=$local_id SLURM_NTASKS=$((SLURM_NNODES * SLURM_NTASKS_PER_NODE)) "$@" || exit
done
""")
    executable(bin_dir / "python", f"""#!/usr/bin/env bash
{{ echo "CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}}"; printf '%s\\n' "$@"; }} > {shlex.quote(str(log))}/$SLURM_PROCID
""")
    return path_with(bin_dir), log


@pytest.mark.parametrize("per, visible, expected", [
    ("gpu", lambda i: "4,5,6,7", lambda i: str(4 + i)),  # every task sees the node's GPUs: it keeps its own
    ("gpu", lambda i: str(4 + i), lambda i: str(4 + i)),  # Slurm bound one GPU to each task: kept
    ("gpu", lambda i: None, lambda i: str(i)),  # no list: GPU number SLURM_LOCALID
    ("node", lambda i: "0,1,2,3", lambda i: "0,1,2,3"),  # one process sees them all
], ids=["gpu-node-list", "gpu-bound", "gpu-unset", "node"])
def test_slurm_job_runs_one_process_per_task(tmp_path, per, visible, expected):
    env, log = fake_cluster(tmp_path, visible)
    script = tmp_path / "job.sh"
    script.write_text(job_script(slurm_dry_run("--per", per, "--port", "4321")))
    tasks_per_node = 4 if per == "gpu" else 1
    env.update(SLURM_JOB_NODELIST="node[1-2]", SLURM_NNODES="2", SLURM_NTASKS_PER_NODE=str(tasks_per_node),
               SLURM_PROCID="0")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)
    n = 2 * tasks_per_node
    assert sorted(int(p.name) for p in log.iterdir()) == list(range(n))
    for i in range(n):
        lines = (log / str(i)).read_text().splitlines()
        assert lines == [f"CUDA_VISIBLE_DEVICES={expected(i % tasks_per_node)}", "-m", "mend_jax.train",
                         "--distributed=on", "--coordinator_address=node1:4321", f"--num_processes={n}",
                         f"--process_id={i}", *TRAIN]


def test_slurm_submits_script_on_stdin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "sbatch", f'#!/usr/bin/env bash\n[[ $1 == --parsable ]] || exit 9\n'
                                   f'cat > {shlex.quote(str(tmp_path / "submitted"))}\necho "4242;cluster"\n')
    result = run(SLURM, "--nodes", "2", "--gpus-per-node", "4", "--", *TRAIN, env=path_with(bin_dir))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "submitted").read_text() == job_script(result.stdout)
    assert "Submitted job 4242." in result.stdout and "scancel 4242" in result.stdout
    assert f"tail -f {ROOT}/mend-jax-4242.out" in result.stdout


# --- shellcheck --------------------------------------------------------------


@pytest.fixture
def shellcheck():
    path = shutil.which("shellcheck")
    if path is None:
        if os.environ.get("MEND_JAX_REQUIRE_SHELLCHECK") == "1":
            pytest.fail("shellcheck is not installed and MEND_JAX_REQUIRE_SHELLCHECK=1")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    return path


def test_scripts_pass_shellcheck(shellcheck):
    result = subprocess.run([shellcheck, str(TPU), str(SLURM), str(COMMON), str(GPU_ROWS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("per", ["gpu", "node"])
def test_generated_sbatch_script_passes_shellcheck(shellcheck, tmp_path, per):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    script = tmp_path / "job.sh"
    script.write_text(job_script(slurm_dry_run("--per", per, "--venv", str(venv), "--partition", "gpu")))
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable():
    for script in (TPU, SLURM, GPU_ROWS):
        assert os.access(script, os.X_OK), script
