#!/usr/bin/env bash
# Starts the kind tier's dockerd (when it is not running) and prints the `export` lines that
# point Docker, kind and bookinfo-up at it and at the node image built here:
#   eval "$(bash testbed/kind/env.sh)"      # or: eval "$(just kind-env)"
#   bash testbed/kind/dockerd.sh stop       # or: just kind-stop
# With --check it only says whether the tier is built (exit 0, printing the node image pinned
# by digest) or not (exit 1, on stderr).
# Fails, printing nothing on stdout, when the tier for these versions is not built: run
# `just testbed-kind`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

stamps="$KIND_TIER_DIR/docker/bookinfo-up-stamps"
missing=()
for f in "$stamps/images" "$stamps/node" "$stamps/node-ref" "$stamps/test-images" \
  "$stamps/hello-$KIND_TIER_HELLO_KEY" "$stamps/proxy-$KIND_TIER_PROXY_KEY" \
  "$stamps/bookinfo-$KIND_TIER_BOOKINFO_KEY"; do
  [[ -e "$f" ]] || missing+=("$f")
done
if ((${#missing[@]})); then
  {
    echo "testbed/kind/env.sh: the kind tier for these versions is not built (key $KIND_TIER_KEY); missing:"
    printf '  %s\n' "${missing[@]}"
    echo "run: just testbed-kind"
  } >&2
  exit 1
fi
node_ref="$(cat "$stamps/node-ref")"
if [[ "${1:-}" == --check ]]; then
  echo "$node_ref"
  exit 0
fi

bash "$here/../env.sh"
bash "$here/dockerd.sh" start
q() { printf '%q' "$1"; }
echo "export BOOKINFO_UP_KIND_TIER=$(q "$KIND_TIER_DIR")"
echo "export KIND_TIER_NODE_IMAGE=$(q "$node_ref")"
# The real plan's node image, through its variable: the image built here, pinned by its digest,
# instead of the published one the plan pins.
echo "export BOOKINFO_UP_VAR_KIND_NODE_IMAGE=$(q "$node_ref")"
