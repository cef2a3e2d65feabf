# Shared by testbed/kind/{build,env,dockerd}.sh: the pins (testbed/versions.env and
# testbed/kind/versions.env), the testbed's paths and step runner (testbed/lib.sh), and where
# the kind tier for these versions lives.
_kind_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$_kind_lib_dir/../versions.env"
source "$_kind_lib_dir/versions.env"
source "$_kind_lib_dir/../lib.sh"
KIND_TIER_ROOT="${BOOKINFO_UP_KIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bookinfo-up/kind}"
# The tier's key: every pin but the Envoy ones (KIND_TIER_ENVOY_*), which key the proxy image
# alone, and the Bookinfo ones (KIND_TIER_BOOKINFO_*), which key Bookinfo's images alone, so
# that a new Envoy or a new Bookinfo pin rebuilds those images and not the whole tier.
KIND_TIER_KEY="$(
  cd "$_kind_lib_dir" &&
    cat ../versions.env versions.env | grep -v '^#' | grep . | grep -v '^KIND_TIER_ENVOY_' |
    grep -v '^KIND_TIER_BOOKINFO_' | sha256sum | cut -c1-12
)"
# Keys of the images built on top of the tier's, each naming its stamp: the proxy image by the
# Envoy pins, the test's HTTP server image by its source (so an edit of hello/ rebuilds it).
KIND_TIER_PROXY_KEY="$(grep '^KIND_TIER_ENVOY_' "$_kind_lib_dir/versions.env" | sha256sum | cut -c1-12)"
KIND_TIER_HELLO_KEY="$(cat "$_kind_lib_dir"/hello/go.mod "$_kind_lib_dir"/hello/*.go | sha256sum | cut -c1-12)"
# Bookinfo's images (testbed/kind/bookinfo.sh): its pins, the Istio tree its sources come from,
# the Debian release of its bases, and its build script and files.
KIND_TIER_BOOKINFO_KEY="$(
  cd "$_kind_lib_dir" &&
    { grep -E '^(KIND_TIER_BOOKINFO_|KIND_TIER_DEBIAN_SUITE=)' versions.env
      grep -E '^ISTIO_(MODULE_)?VERSION=' ../versions.env
      cat bookinfo.sh bookinfo/*; } | sha256sum | cut -c1-12
)"
KIND_TIER_DIR="$KIND_TIER_ROOT/$KIND_TIER_KEY"
# Versions kubeadm v1.34 asks for (kubeadm config images list) that are not pins of their own.
KIND_TIER_PAUSE_VERSION=3.10.1
