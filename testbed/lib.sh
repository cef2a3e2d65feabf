# Shared by testbed/build.sh and testbed/env.sh: where the testbed for these versions lives.
# Source after versions.env.
TESTBED_ROOT="${BOOKINFO_UP_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bookinfo-up/testbed}"
TESTBED_KEY="$(
  grep -v '^#' "$(dirname "${BASH_SOURCE[0]}")/versions.env" | grep . | sha256sum | cut -c1-12
)"
TESTBED_DIR="$TESTBED_ROOT/$TESTBED_KEY"
