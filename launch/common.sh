# shellcheck shell=bash
# What launch/slurm.sh and launch/tpu_pod.sh share: messages, option parsing and the checks
# on the train arguments. Sourced, not run. A script that sources it defines usage() (the
# --help text) and VALUE_OPTIONS, the options that take a value, each as OPTION=VARIABLE:
#   VALUE_OPTIONS=(--name=NAME --zone=ZONE)
# parse_args then sets VARIABLE from "--option value" or "--option=value".

# The script that sourced this file, for its messages.
readonly LAUNCH_SCRIPT=${BASH_SOURCE[1]##*/}

# Set by parse_args.
DRY_RUN=0
TRAIN_ARGS=()

die() {
  echo "$LAUNCH_SCRIPT: $*" >&2
  echo "Try 'launch/$LAUNCH_SCRIPT --help'." >&2
  exit 2
}

# The variable that option $1 sets, when it is one of VALUE_OPTIONS; else fails.
option_variable() {
  local spec
  for spec in "${VALUE_OPTIONS[@]}"; do
    if [[ ${spec%%=*} == "$1" ]]; then
      echo "${spec#*=}"
      return
    fi
  done
  return 1
}

# Options until --, then TRAIN_ARGS: everything after it. Sets DRY_RUN on --dry-run.
# shellcheck disable=SC2034  # DRY_RUN is read by the scripts that source this file
parse_args() {
  local opt var
  while (( $# )); do
    opt=$1
    case $opt in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      --) shift; TRAIN_ARGS=("$@"); return ;;
      --*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1 ;;  # --opt=value as --opt value
    esac
    var=$(option_variable "$opt") || die "unknown option '$opt' (train arguments go after --)"
    if (( $# < 2 )) || [[ -z $2 ]]; then die "$opt needs a value"; fi
    printf -v "$var" '%s' "$2"
    shift 2
  done
}

# TRAIN_ARGS must include --config and none of the distributed flags the script sets itself;
# $1 says who sets them, as in "train argument '--process_id=3' $1; drop it".
check_train_args() {
  local set_by=$1 arg has_config=0
  (( ${#TRAIN_ARGS[@]} )) || die "no train arguments: add -- --config=configs/gen.py[:ARG] ..."
  for arg in "${TRAIN_ARGS[@]}"; do
    case $arg in
      --config=*|--config) has_config=1 ;;
      --distributed*|--coordinator_address*|--num_processes*|--process_id*)
        die "train argument '$arg' $set_by; drop it" ;;
    esac
  done
  (( has_config )) || die "train arguments need --config=... (after --)"
}
