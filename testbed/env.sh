#!/usr/bin/env bash
# Prints the shell `export` lines that point tools and tests at the built testbed:
#   eval "$(bash testbed/env.sh)"
# Fails (message on stderr, nothing on stdout) when the testbed for these versions is not built:
# run `bash testbed/build.sh` first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
source "$here/lib.sh"

bin="$TESTBED_DIR/bin"
istio="$TESTBED_DIR/istio"
# Needed by kwokctl's binary runtime and by the tests; istioctl is optional (see build.sh).
missing=()
for f in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm kind pilot-discovery; do
  [[ -x "$bin/$f" ]] || missing+=("$bin/$f")
done
[[ -f "$istio/SOURCE" ]] || missing+=("$istio")
if ((${#missing[@]})); then
  {
    echo "testbed/env.sh: the testbed for testbed/versions.env is not built (key $TESTBED_KEY); missing:"
    printf '  %s\n' "${missing[@]}"
    echo "run: bash testbed/build.sh"
  } >&2
  exit 1
fi

q() { printf '%q' "$1"; }
emit() { echo "export $1=$(q "$2")"; }

emit TESTBED_DIR "$TESTBED_DIR"
emit BOOKINFO_UP_TESTBED_BIN "$bin"
emit BOOKINFO_UP_ISTIO_DIR "$istio"
# The testbed first on PATH, once, however often this is evaluated.
path=":${PATH:-}:"
path="${path//:$bin:/:}"
path="${path#:}"
path="${path%:}"
emit PATH "$bin${path:+:$path}"

# Every pin of versions.env (comments and blank lines skipped).
while IFS='=' read -r name _; do
  [[ "$name" =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
  emit "$name" "${!name}"
done <"$here/versions.env"

# kwokctl (sigs.k8s.io/kwok pkg/config/vars.go) reads KWOK_<X> for its options: the binary
# runtime with the local binaries, so it never downloads anything. KWOK_VERSION (the kwok pin,
# exported above) is also what kwokctl reads as the kwok version, which matches.
emit KWOK_RUNTIME binary
emit KWOK_KUBE_VERSION "$KUBERNETES_VERSION"
emit KWOK_KUBE_APISERVER_BINARY "$bin/kube-apiserver"
emit KWOK_KUBE_CONTROLLER_MANAGER_BINARY "$bin/kube-controller-manager"
emit KWOK_KUBE_SCHEDULER_BINARY "$bin/kube-scheduler"
emit KWOK_KUBECTL_BINARY "$bin/kubectl"
emit KWOK_CONTROLLER_BINARY "$bin/kwok"
emit KWOK_ETCD_BINARY "$bin/etcd"
emit KWOK_ETCD_VERSION "${ETCD_VERSION#v}"
