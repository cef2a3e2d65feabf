#!/usr/bin/env bash
# Builds the tier-1 test control plane from source through the Go module proxy:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, kwokctl,
# helm, istioctl, kind, plus Istio's charts, addons and Bookinfo sample.
#
# Everything lands in a cache outside the repository, keyed by testbed/versions.env:
#   ${BOOKINFO_UP_TESTBED_CACHE:-~/.cache/bookinfo-up/testbed}/<key>/{bin,istio,logs}
# A component whose output is present is not rebuilt, so a warm run takes well under a second.
# The key covers versions.env only: after changing how a component is built here (ldflags, ...),
# delete its binaries from <key>/bin to rebuild it. Module and build caches (gomod, gobuild)
# are shared by all keys. Then: `eval "$(bash testbed/env.sh)"`; `bash testbed/smoke.sh`
# checks every binary's version and brings a kwok cluster up and down.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
source "$here/lib.sh"

mkdir -p "$TESTBED_DIR/bin" "$TESTBED_DIR/logs" "$TESTBED_DIR/src"
log="$TESTBED_DIR/logs/build-$(date +%Y%m%d-%H%M%S).log"
: >"$log"
echo "testbed: $TESTBED_DIR"

export GOMODCACHE="$TESTBED_ROOT/gomod"
export GOCACHE="$TESTBED_ROOT/gobuild"
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0
jobs="${TESTBED_GO_JOBS:-2}"

# A throwaway module that depends on the wanted modules and builds their commands. Needed where
# a module's own go.mod uses replace directives (Kubernetes points its staging modules at local
# folders that the published module zip does not contain).
wrapper_build() {
  local dir="$1" gomod="$2" tools="$3" ldflags="$4"
  shift 4
  rm -rf "$dir"
  mkdir -p "$dir"
  printf '%s\n' "$gomod" >"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n%s\n)\n' "$tools" >"$dir/tools.go"
  # tidy -e: tidy also resolves the imports of the dependencies' tests, which may name modules
  # the proxy refuses (istio's do); `go build` below still fails on anything the build needs.
  (cd "$dir" && go mod tidy -e && go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$TESTBED_DIR/bin/" "$@")
}

build_kubernetes() {
  local kmod
  kmod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  local replaces
  replaces="$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$kmod" |
    awk -v v="$KUBERNETES_STAGING_VERSION" '{ printf "replace %s => %s %s\n", $1, $1, v }')"
  local gomod
  gomod="$(printf 'module testbed/kubernetes\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\n%s\n' "$KUBERNETES_VERSION" "$replaces")"
  local tools=$'\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kube-controller-manager"\n\t_ "k8s.io/kubernetes/cmd/kube-scheduler"\n\t_ "k8s.io/kubectl/pkg/cmd"'
  local minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  wrapper_build "$TESTBED_DIR/src/kubernetes" "$gomod" "$tools" "$ld" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  local gomod
  gomod="$(printf 'module testbed/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION")"
  wrapper_build "$TESTBED_DIR/src/etcd" "$gomod" $'\t_ "go.etcd.io/etcd/server/v3"' "-s -w" go.etcd.io/etcd/server/v3
  # `go build` names the binary after the module path less its major version suffix.
  mv "$TESTBED_DIR/bin/server" "$TESTBED_DIR/bin/etcd"
}

build_kwok() {
  local ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBERNETES_VERSION"
  GOBIN="$TESTBED_DIR/bin" go install -p "$jobs" -trimpath -ldflags "$ld" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
}

build_helm() {
  # As helm's Makefile stamps a release: version, tree state, and the Kubernetes version that
  # `helm template` assumes without a cluster (client-go v0.X.Y in helm's go.mod -> v1.X).
  local hmod client_go kminor
  hmod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  client_go="$(awk '$1 == "k8s.io/client-go" { print $2 }' "$hmod")"
  kminor="$(echo "$client_go" | cut -d. -f2)"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kminor"
  done
  GOBIN="$TESTBED_DIR/bin" go install -p "$jobs" -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_kind() {
  GOBIN="$TESTBED_DIR/bin" go install -p "$jobs" -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
}

# A wrapper module around the Istio commit. The commit requires pseudo-versions of some
# dependencies that the proxy refuses; the wrapper requires the served versions listed in
# ISTIOCTL_GO_REQUIRES (see versions.env), which minimal version selection then takes.
# istio_build DIR EXTRA_GO_MOD PACKAGE: builds PACKAGE into bin/, stamped as Istio's release
# builds do (common/scripts/report_build_info.sh); hub and version are also the defaults
# `istioctl install` renders images with (docker.io/istio/...:VERSION).
istio_build() {
  local dir="$1" extra="$2" pkg="$3"
  local requires="" req
  for req in ${ISTIOCTL_GO_REQUIRES//,/ }; do
    requires+=$'\t'"${req%@*} ${req#*@}"$'\n'
  done
  local gomod
  gomod="$(printf 'module testbed/%s\n\ngo 1.25\n\nrequire (\n\tistio.io/istio %s\n%s)\n%s\n' \
    "$(basename "$dir")" "$ISTIO_MODULE_VERSION" "$requires" "$extra")"
  local v=istio.io/istio/pkg/version
  local ld="-s -w -X $v.buildVersion=$ISTIO_VERSION -X $v.buildGitRevision=$ISTIO_COMMIT"
  ld+=" -X $v.buildStatus=Clean -X $v.buildTag=$ISTIO_VERSION -X $v.buildHub=docker.io/istio"
  ld+=" -X $v.buildOS=$(go env GOOS) -X $v.buildArch=$(go env GOARCH)"
  wrapper_build "$dir" "$gomod" $'\t_ "'"$pkg"'"' "$ld" "$pkg"
}

build_istioctl() {
  istio_build "$TESTBED_DIR/src/istioctl" "" istio.io/istio/istioctl/cmd/istioctl
}

# istiod (pilot-discovery) from the same commit, for the sim's real Istio control plane.
# pilot/pkg/bootstrap imports the agentgateway controller, whose API module
# (github.com/agentgateway/agentgateway/api) the Go module proxy refuses in every version. The
# controller only runs with PILOT_ENABLE_AGENTGATEWAY=true (off by default, and off in the
# plans), so testbed/pilot-discovery-no-agentgateway.patch removes its import and the blocks
# that the flag gates, in a copy of the module that the wrapper replaces istio.io/istio with.
build_pilot_discovery() {
  local dir patched="$TESTBED_DIR/src/istio-patched"
  dir="$(go mod download -json "istio.io/istio@$ISTIO_MODULE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  rm -rf "$patched"
  cp -r "$dir" "$patched"
  chmod -R u+w "$patched"
  patch -p1 -d "$patched" <"$here/pilot-discovery-no-agentgateway.patch"
  istio_build "$TESTBED_DIR/src/pilot-discovery" "replace istio.io/istio => $patched" \
    istio.io/istio/pilot/cmd/pilot-discovery
}

# Istio's release content, copied out of the module download so the charts, addons and
# Bookinfo sample sit at stable paths that plans and tests can name.
extract_istio() {
  local dir
  dir="$(go mod download -json "istio.io/istio@$ISTIO_MODULE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  rm -rf "$TESTBED_DIR/istio.tmp"
  mkdir -p "$TESTBED_DIR/istio.tmp/charts" "$TESTBED_DIR/istio.tmp/samples"
  cp -r "$dir/manifests/charts/base" "$TESTBED_DIR/istio.tmp/charts/base"
  cp -r "$dir/manifests/charts/istio-control/istio-discovery" "$TESTBED_DIR/istio.tmp/charts/istiod"
  cp -r "$dir/manifests/charts/gateway" "$TESTBED_DIR/istio.tmp/charts/gateway"
  cp -r "$dir/samples/addons" "$TESTBED_DIR/istio.tmp/samples/addons"
  cp -r "$dir/samples/bookinfo" "$TESTBED_DIR/istio.tmp/samples/bookinfo"
  chmod -R u+w "$TESTBED_DIR/istio.tmp"
  echo "$dir" >"$TESTBED_DIR/istio.tmp/SOURCE"
  rm -rf "$TESTBED_DIR/istio"
  mv "$TESTBED_DIR/istio.tmp" "$TESTBED_DIR/istio"
}

b="$TESTBED_DIR/bin"
step "istio content $ISTIO_VERSION" "$TESTBED_DIR/istio/SOURCE" -- extract_istio
step "kind $KIND_VERSION" "$b/kind" -- build_kind
step "kwok $KWOK_VERSION" "$b/kwok" "$b/kwokctl" -- build_kwok
step "etcd $ETCD_VERSION" "$b/etcd" -- build_etcd
step "helm $HELM_VERSION" "$b/helm" -- build_helm
step "kubernetes $KUBERNETES_VERSION" "$b/kube-apiserver" "$b/kube-controller-manager" "$b/kube-scheduler" "$b/kubectl" -- build_kubernetes
step "istioctl $ISTIO_VERSION" "$b/istioctl" -- build_istioctl
step "istiod $ISTIO_VERSION" "$b/pilot-discovery" -- build_pilot_discovery

# A warm run leaves no log behind.
if [[ $built == 1 ]]; then echo "build log:      $log"; else rm -f "$log"; fi
echo "binaries:       $TESTBED_DIR/bin"
echo "istio content:  $TESTBED_DIR/istio (charts/{base,istiod,gateway}, samples/{addons,bookinfo})"
if ((${#failed[@]})); then
  echo "testbed: FAILED: ${failed[*]}; unavailable until fixed (log: $log)" >&2
  exit 1
fi
echo "use it:         eval \"\$(bash testbed/env.sh)\""
