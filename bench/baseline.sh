#!/usr/bin/env bash
# Side B of `just bench`: the seed's procedure as a script of kubectl commands, one command per
# step as the walk-through types them, on a cluster where the Istio Helm releases are already
# installed. bench/run.py times it against `bookinfo-up plans/bench/seed-steps.toml` (side A).
#
#   bench/baseline.sh MANIFESTS
#
# MANIFESTS is the folder bench/run.py renders from the plan's manifests and variables:
#   bookinfo/{details,ratings,reviews,productpage}.yaml   manifests/bookinfo, templated
#   istio/{bookinfo-gateway,kiali-gateway,ingress-ports}.yaml
#   addons/{prometheus,grafana,jaeger,kiali}.yaml         the testbed's files, sha256-checked
#   kiali-configmap-patch.json                            config.yaml with the Grafana settings
# KUBECONFIG names the cluster. BENCH_KUBECTL_V=6 makes every kubectl log its requests (the
# harness counts them).
#
# Two departures from the seed, both so that the script can run again over its own result
# (the no-op and drift scenarios): `create namespace` may find the namespace there, and
# `label` passes --overwrite. Hand edits (`kubectl edit`) become the equivalent `kubectl patch`.
set -euo pipefail

m=${1:?usage: baseline.sh MANIFESTS}
v=()
if [[ -n ${BENCH_KUBECTL_V:-} ]]; then v=("-v=$BENCH_KUBECTL_V"); fi
k() { kubectl "${v[@]}" "$@"; }

if out=$(k create namespace bookinfo 2>&1); then
  echo "$out"
else
  echo "$out" >&2
  [[ $out == *AlreadyExists* ]] || exit 1
fi
k label namespace bookinfo istio-injection=enabled --overwrite
for f in details ratings reviews productpage; do
  k -n bookinfo apply -f "$m/bookinfo/$f.yaml"
done
k -n bookinfo apply -f "$m/istio/bookinfo-gateway.yaml"
k apply -f "$m/addons"
k -n istio-system apply -f "$m/istio/kiali-gateway.yaml"
k -n istio-system patch configmap kiali --type merge --patch-file "$m/kiali-configmap-patch.json"
k -n istio-system patch service istio-ingressgateway --patch-file "$m/istio/ingress-ports.yaml"
# For the harness's detection latency: when the rollout checks begin (no process spawned).
echo "rollout-status-begins $EPOCHREALTIME" >&2
for d in details-v1 ratings-v1 reviews-v1 reviews-v2 reviews-v3 productpage-v1; do
  k -n bookinfo rollout status "deployment/$d" --timeout=10m
done
for d in istiod istio-ingressgateway prometheus grafana jaeger kiali; do
  k -n istio-system rollout status "deployment/$d" --timeout=10m
done
