# Shared by testbed/build.sh and testbed/env.sh: where the testbed for these versions lives.
# Source after versions.env.
TESTBED_ROOT="${BOOKINFO_UP_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bookinfo-up/testbed}"
TESTBED_KEY="$(
  grep -v '^#' "$(dirname "${BASH_SOURCE[0]}")/versions.env" | grep . | sha256sum | cut -c1-12
)"
TESTBED_DIR="$TESTBED_ROOT/$TESTBED_KEY"

# Shared by testbed/build.sh and testbed/kind/build.sh: the one-line-per-component runner.
# step NAME CHECK_FILE... -- COMMAND: runs COMMAND unless every CHECK_FILE exists; one line
# each, the output in $log. A failure is recorded in `failed` and the run goes on, unless
# STEP_STOP_AFTER_FAILURE=1, when the later steps are reported as not built. Sets built=1 when
# anything ran. STEP_WIDTH is the width of the name column.
failed=()
built=0
step() {
  local name="$1"
  shift
  local outputs=()
  while [[ "$1" != "--" ]]; do
    outputs+=("$1")
    shift
  done
  shift
  local width="${STEP_WIDTH:-26}"
  local missing=0 f
  for f in "${outputs[@]}"; do [[ -e "$f" ]] || missing=1; done
  if [[ $missing == 0 ]]; then
    printf "  %-${width}s cached\n" "$name"
    return 0
  fi
  if [[ "${STEP_STOP_AFTER_FAILURE:-0}" == 1 ]] && ((${#failed[@]})); then
    printf "  %-${width}s not built (an earlier step failed)\n" "$name"
    return 0
  fi
  local start=$SECONDS
  built=1
  printf "  %-${width}s building ... " "$name"
  echo "=== $name: $* (started $(date -u +%FT%TZ))" >>"$log"
  # In a subshell with errexit on, so that a function stops at its first failing command
  # (errexit does not apply to a command run as an `if` condition).
  local rc=0
  set +e
  (
    set -e
    "$@"
  ) >>"$log" 2>&1
  rc=$?
  set -e
  if [[ $rc == 0 ]]; then
    for f in "${outputs[@]}"; do
      if [[ ! -e "$f" ]]; then
        echo "failed: $f was not produced (see $log)"
        echo "=== $name: FAILED, $f not produced" >>"$log"
        failed+=("$name")
        return 0
      fi
    done
    echo "done in $((SECONDS - start)) s"
    echo "=== $name: done in $((SECONDS - start)) s" >>"$log"
  else
    echo "FAILED after $((SECONDS - start)) s (see $log)"
    echo "=== $name: FAILED after $((SECONDS - start)) s" >>"$log"
    failed+=("$name")
  fi
}
