#!/usr/bin/env bash
# Runs mend_jax.train on every worker of a multi-host Cloud TPU VM slice.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator-type TYPE [options] -- TRAIN_ARGS...

Creates the TPU VM slice NAME (or reuses it when it exists), clones or updates the
repository and runs `pip install -e ".[tpu]"` on every worker, then starts
`python3 -m mend_jax.train --distributed=on TRAIN_ARGS...` on all workers under nohup.

Options:
  --name NAME              TPU VM name (lowercase letters, digits, hyphens)
  --zone ZONE              e.g. us-central2-b
  --accelerator-type TYPE  e.g. v4-32, v5litepod-16, v5p-32, v6e-16
  --version RUNTIME        TPU software version (default by generation: v6e v2-alpha-tpuv6e,
                           v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, older tpu-ubuntu2204-base)
  --project PROJECT        Google Cloud project (default: gcloud's configured one)
  --repo URL               git URL cloned on the workers (default https://github.com/mend-jax/mend-jax.git)
  --branch BRANCH          branch to check out (default: the repository's default branch)
  --dry-run                print every command, one per line prefixed with "+ ", and run none
  -h, --help               this text

TRAIN_ARGS (after --) go to mend_jax.train verbatim and must include --config=...
Example:
  launch/tpu_pod.sh --name mend-v4 --zone us-central2-b --accelerator-type v4-32 -- \
    --config=configs/gen.py --config.mesh.data=-1 --workdir=gs://BUCKET/mend
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Paths on the workers: $HOME is expanded there, not here.
readonly REMOTE_DIR="\$HOME/mend-jax"
readonly REMOTE_LOG="\$HOME/mend_jax_train.log"
readonly REMOTE_PID="\$HOME/mend_jax_train.pid"

NAME="" ZONE="" TYPE="" VERSION="" PROJECT="" BRANCH=""
REPO="https://github.com/mend-jax/mend-jax.git"
VALUE_OPTIONS=(--name=NAME --zone=ZONE --accelerator-type=TYPE --version=VERSION --project=PROJECT
               --repo=REPO --branch=BRANCH)

# One word, shell-quoted for display and for the workers' shell: bare when safe, else in single quotes.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

# Prints a command as "+ WORDS"; runs it unless --dry-run.
run() {
  echo "+ $(quote_all "$@")"
  if (( ! DRY_RUN )); then "$@"; fi
}

# Runtime recommended for the accelerator's generation (Cloud TPU "TPU software versions").
default_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

check_args() {
  [[ -n $NAME ]] || die "--name is required"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME': lowercase letters, digits and hyphens, starting with a letter"
  [[ -n $ZONE ]] || die "--zone is required"
  [[ -n $TYPE ]] || die "--accelerator-type is required"
  [[ $TYPE =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] || die "--accelerator-type '$TYPE': expected e.g. v4-32, v5litepod-16, v6e-16"
  [[ -n $VERSION ]] || VERSION=$(default_version "$TYPE")
  # The script sets --distributed=on itself; JAX finds the pod's coordinator.
  check_train_args "is set by this script (--distributed=on)"
}

# gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone [--project] ...
tpu() {
  local sub=$1; shift
  local cmd=(gcloud compute tpus tpu-vm "$sub" "$NAME" "--zone=$ZONE")
  [[ -z $PROJECT ]] || cmd+=("--project=$PROJECT")
  printf '%s\0' "${cmd[@]}" "$@"  # NUL-separated: words may hold newlines
}

# Reuses the slice when describe finds it, else creates it.
ensure_slice() {
  local describe create start state
  mapfile -d '' -t describe < <(tpu describe '--format=value(state)')
  mapfile -d '' -t create < <(tpu create "--accelerator-type=$TYPE" "--version=$VERSION")
  mapfile -d '' -t start < <(tpu start)
  if (( DRY_RUN )); then
    echo "+ $(quote_all "${describe[@]}") || $(quote_all "${create[@]}")"
    return
  fi
  if state=$("${describe[@]}" 2>/dev/null); then
    echo "Reusing TPU VM $NAME (state $state)."
    [[ $state == READY ]] || die "TPU VM $NAME is $state, not READY (start it: $(quote_all "${start[@]}"))"
  else
    run "${create[@]}"
  fi
}

# Runs one shell command line on every worker.
on_all_workers() {
  local ssh
  mapfile -d '' -t ssh < <(tpu ssh --worker=all "--command=$1")
  run "${ssh[@]}"
}

# Clone, or fast-forward an existing checkout, then install with the TPU extra.
setup_command() {
  local dir="\"$REMOTE_DIR\"" fetch clone
  if [[ -n $BRANCH ]]; then
    local b; b=$(quote "$BRANCH")
    fetch="git -C $dir fetch origin && git -C $dir checkout $b && git -C $dir pull --ff-only origin $b"
    clone="git clone --branch $b $(quote "$REPO") $dir"
  else
    fetch="git -C $dir pull --ff-only"
    clone="git clone $(quote "$REPO") $dir"
  fi
  printf '%s' "set -e; if [ -d $dir/.git ]; then $fetch; else $clone; fi; cd $dir;" \
    " python3 -m pip install -q --upgrade pip; python3 -m pip install -q -e \".[tpu]\""
}

# Starts training in the background; refuses while a previous run on the worker is alive.
start_command() {
  local pid="\"$REMOTE_PID\"" log="\"$REMOTE_LOG\""
  printf '%s' "cd \"$REMOTE_DIR\";" \
    " if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then echo \"mend_jax.train already runs on \$(hostname)\" >&2; exit 1; fi;" \
    " nohup python3 -m mend_jax.train --distributed=on $(quote_all "${TRAIN_ARGS[@]}") > $log 2>&1 < /dev/null & echo \$! > $pid"
}

print_next_steps() {
  local logs stop delete
  mapfile -d '' -t logs < <(tpu ssh --worker=0 "--command=tail -f \"$REMOTE_LOG\"")
  mapfile -d '' -t stop < <(tpu ssh --worker=all "--command=kill \"\$(cat \"$REMOTE_PID\")\"")
  mapfile -d '' -t delete < <(tpu delete)
  if (( DRY_RUN )); then
    printf '\nDry run: nothing ran. After a real run:\n'
  else
    printf '\nTraining started on all workers of %s (each logs to ~/mend_jax_train.log).\n' "$NAME"
  fi
  cat <<EOF
Stream worker 0's log:
  $(quote_all "${logs[@]}")
Stop the run:
  $(quote_all "${stop[@]}")
Delete the slice:
  $(quote_all "${delete[@]}")
EOF
}

main() {
  parse_args "$@"
  check_args
  ensure_slice
  on_all_workers "$(setup_command)"
  on_all_workers "$(start_command)"
  print_next_steps
}

main "$@"
