#!/usr/bin/env bash
# Quick self-check of the built testbed, without cargo (about 10 s):
#   1. every binary prints the version pinned in testbed/versions.env;
#   2. kwokctl's binary runtime brings up a cluster from the local binaries (offline), with one
#      untainted node, a 3-replica Deployment becomes Available, and deleting the cluster leaves
#      no process behind. Everything is written under a temporary KWOK_WORKDIR.
# Usage: bash testbed/smoke.sh [--versions-only]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
env_lines="$(bash "$here/env.sh")"
eval "$env_lines"

fail=0
check() { # check NAME WANT COMMAND...: COMMAND's output must contain WANT
  local name="$1" want="$2" out
  shift 2
  out="$("$@" 2>&1 | head -n 3 | tr '\n' ' ')" || true
  if [[ "$out" == *"$want"* ]]; then
    printf '  %-24s ok    %s\n' "$name" "$out"
  else
    printf '  %-24s WRONG want %s, got: %s\n' "$name" "$want" "$out"
    fail=1
  fi
}

echo "versions ($BOOKINFO_UP_TESTBED_BIN):"
check kubectl "Client Version: $KUBERNETES_VERSION" kubectl version --client
check kube-apiserver "Kubernetes $KUBERNETES_VERSION" kube-apiserver --version
check kube-controller-manager "Kubernetes $KUBERNETES_VERSION" kube-controller-manager --version
check kube-scheduler "Kubernetes $KUBERNETES_VERSION" kube-scheduler --version
check etcd "etcd Version: ${ETCD_VERSION#v}" etcd --version
check kwok "kwok version $KWOK_VERSION" kwok --version
check kwokctl "kwokctl version $KWOK_VERSION" kwokctl --version
check helm "Version:\"$HELM_VERSION\"" helm version
check kind "kind $KIND_VERSION" kind version
if [[ -x "$BOOKINFO_UP_TESTBED_BIN/istioctl" ]]; then
  check istioctl "client version: $ISTIO_VERSION" istioctl version --remote=false
else
  printf '  %-24s UNAVAILABLE (not built; see testbed/build.sh)\n' istioctl
  fail=1
fi
[[ "${1:-}" == "--versions-only" ]] && exit "$fail"

echo "kwok cluster (binary runtime):"
export KWOK_WORKDIR
KWOK_WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/bookinfo-up-smoke.XXXXXX")"
export KUBECONFIG="$KWOK_WORKDIR/kubeconfig"
name=smoke
k() { kubectl --cache-dir "$KWOK_WORKDIR/kubectl-cache" "$@"; }
# Processes whose command line names the workdir (bash builtins only, so no helper process
# of this check matches itself).
cluster_processes() {
  local f args
  for f in /proc/[0-9]*/cmdline; do
    mapfile -d '' args <"$f" 2>/dev/null || continue
    [[ "${args[*]}" == *"$KWOK_WORKDIR"* ]] && echo "${f#/proc/}: ${args[*]:0:2}"
  done
  return 0
}
cleanup() {
  kwokctl delete cluster --name "$name" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || true
  rm -rf "$KWOK_WORKDIR"
}
trap cleanup EXIT
start=$SECONDS
if ! kwokctl create cluster --name "$name" --kubeconfig "$KUBECONFIG" --wait 120s \
  --extra-args "kube-apiserver=disable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy" \
  >"$KWOK_WORKDIR/create.log" 2>&1; then
  echo "  create cluster FAILED:"
  tail -n 20 "$KWOK_WORKDIR/create.log" "$KWOK_WORKDIR/clusters/$name/logs/"*.log
  exit 1
fi
echo "  cluster up in $((SECONDS - start)) s: $(k get --raw /version | tr -d ' \n' | cut -c1-60)..."
echo "  processes: $(cluster_processes | wc -l)"
kwokctl scale node --name "$name" --replicas 1 >/dev/null 2>&1
k wait --for=condition=Ready nodes --all --timeout=60s >/dev/null
for _ in $(seq 1 60); do
  [[ -z "$(k get nodes -o jsonpath='{.items[*].spec.taints}')" ]] && break
  sleep 0.5
done
echo "  node: $(k get nodes --no-headers) taints=[$(k get nodes -o jsonpath='{.items[*].spec.taints}')]"
k apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: smoke, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec:
      containers: [{name: app, image: registry.invalid/smoke:1}]
EOF
if k rollout status deployment/smoke --timeout=120s >/dev/null; then
  echo "  deployment: $(k get deployment smoke --no-headers)"
else
  echo "  deployment did NOT become available"
  fail=1
fi
kwokctl delete cluster --name "$name" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1
left=""
for _ in $(seq 1 40); do
  left="$(cluster_processes)"
  [[ -z "$left" ]] && break
  sleep 0.5
done
if [[ -n "$left" ]]; then
  echo "  processes left after delete: $left"
  fail=1
else
  echo "  deleted, no process left ($((SECONDS - start)) s in all)"
fi
exit "$fail"
