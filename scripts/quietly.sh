#!/usr/bin/env bash
# Run a long, noisy step (a Go build, apt-get, pip) with its output in a log file instead of the terminal:
#
#   quietly.sh LOG WHAT USUALLY -- COMMAND [ARGS...]      (or: source it and call `quietly` the same way)
#
# says what runs, how long it usually takes and where its output goes; every minute (QUIETLY_EVERY_S)
# that it is still running; and when it fails, the last lines of the log and the exit code, which it
# returns. WHAT is a phrase ("building kube-apiserver"), USUALLY a duration ("11-15 min on 2 cores";
# empty: not said). The log is appended to. COMMAND may be a shell function when sourced.

quietly() {
  local log="$1" what="$2" usually="$3"
  shift 3
  [[ "${1:-}" == -- ]] && shift
  mkdir -p "$(dirname "$log")"
  echo "${QUIETLY_PREFIX:-}$what${usually:+ (usually $usually)}; output in $log" >&2
  local every="${QUIETLY_EVERY_S:-60}" start=$SECONDS rc=0 parent=$$
  # the heartbeat: ticks of a second (so that it ends with the step, and soon after this script if it is
  # killed) with nothing of the caller's output left open
  ( n=0
    while sleep 1 </dev/null >/dev/null 2>&1; do
      kill -0 "$parent" 2>/dev/null || exit 0
      n=$((n + 1))
      (( n % every == 0 )) && echo "${QUIETLY_PREFIX:-}  ... still $what: $((n / 60)) min $((n % 60)) s so far" >&2
    done ) &
  local heartbeat=$!
  "$@" >>"$log" 2>&1 </dev/null || rc=$?
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  if (( rc != 0 )); then
    echo "${QUIETLY_PREFIX:-}error: $what failed with exit code $rc after $((SECONDS - start)) s; the end of $log:" >&2
    tail -n "${QUIETLY_TAIL_LINES:-40}" "$log" | sed 's/^/  | /' >&2
  fi
  return "$rc"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -uo pipefail
  if (( $# < 4 )); then
    echo "usage: $0 LOG WHAT USUALLY -- COMMAND [ARGS...]" >&2
    exit 2
  fi
  quietly "$@"
fi
