#!/usr/bin/env bash
# Bookinfo's images for the kind tier, built here from the sources in the pinned Istio tree
# (samples/bookinfo/src of the testbed's Istio content, the module ISTIO_MODULE_VERSION), as
# its Dockerfiles and docker-bake.hcl build them, on Debian bases instead of the language
# images (none can be pulled here):
#   <hub>/examples-bookinfo-productpage-v1, -details-v1, -ratings-v1, -reviews-v1, -v2, -v3
# with <hub>:<tag> = KIND_TIER_BOOKINFO_HUB, KIND_TIER_BOOKINFO_TAG (testbed/kind/versions.env),
# the names the real plan's manifests give with its bookinfo_hub and bookinfo_tag variables.
# Run by testbed/kind/build.sh after the rest of the tier (or alone: bash testbed/kind/bookinfo.sh;
# with --no-images it stops before the images, and needs no dockerd).
#
# Cached outside the repository:
#   <kind cache>/downloads/bookinfo-*     what the registries gave (PyPI wheels and sdists, the
#                                         npm packages, Maven Central's jars and Liberty's zip),
#                                         named by their pins and checked against them
#   <kind cache>/<key>/rootfs/bookinfo-*  the debootstrapped bases, named by their package lists
#   <kind cache>/<key>/src/bookinfo-<bookinfo key>/  reviews' war and its minified Liberty server
#   <kind cache>/<key>/docker             the images, in the tier's dockerd; the stamp
#                                         bookinfo-up-stamps/bookinfo-<KIND_TIER_BOOKINFO_KEY>
# The Bookinfo key hashes the KIND_TIER_BOOKINFO_* pins, the Debian suite, the Istio version and
# this script with testbed/kind/bookinfo/: a change of any rebuilds these images and nothing
# else. See README.md, "kind tier", for every difference from the published images.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

if ! tb_env="$(bash "$here/../env.sh")"; then
  echo "kind tier: the tier-1 testbed is missing; run \`just testbed\` first" >&2
  exit 1
fi
eval "$tb_env"

src="$BOOKINFO_UP_ISTIO_DIR/samples/bookinfo/src"
downloads="$KIND_TIER_ROOT/downloads"
work="$KIND_TIER_DIR/src/bookinfo-$KIND_TIER_BOOKINFO_KEY"
stamps="$KIND_TIER_DIR/docker/bookinfo-up-stamps"
stamp="$stamps/bookinfo-$KIND_TIER_BOOKINFO_KEY"
hub="$KIND_TIER_BOOKINFO_HUB"
tag="$KIND_TIER_BOOKINFO_TAG"
mkdir -p "$KIND_TIER_DIR"/{rootfs,logs,src} "$downloads" "$work"
log="$KIND_TIER_DIR/logs/bookinfo-$(date +%Y%m%d-%H%M%S).log"
: >"$log"
STEP_WIDTH=30
STEP_STOP_AFTER_FAILURE=1
short() { sha256sum | cut -c1-12; }

# --- Downloads, through each registry's own client ------------------------------------------

# productpage: the tree's hash-pinned requirements (pip checks every file against them).
pp_key="$(cat "$src/productpage/requirements.txt" "$src/productpage/test-requirements.txt" | short)"
pp_wheels="$downloads/bookinfo-productpage-$pp_key"
fetch_productpage() {
  local tmp
  tmp="$(mktemp -d "$downloads/.pip.XXXXXX")"
  local f
  for f in requirements.txt test-requirements.txt; do
    python3 -m pip download --no-cache-dir --require-hashes -r "$src/productpage/$f" -d "$tmp"
  done
  mv "$tmp" "$pp_wheels"
}

# ratings: `npm ci` of the tree's package.json with the lock made here (integrity hashes).
rt_key="$(cat "$src/ratings/package.json" "$here/bookinfo/ratings-package-lock.json" | short)"
rt_modules="$downloads/bookinfo-ratings-$rt_key"
fetch_ratings() {
  local tmp
  tmp="$(mktemp -d "$downloads/.npm.XXXXXX")"
  cp "$src/ratings/package.json" "$tmp/"
  cp "$here/bookinfo/ratings-package-lock.json" "$tmp/package-lock.json"
  (cd "$tmp" && npm ci --omit=dev --no-audit --no-fund --ignore-scripts)
  mv "$tmp" "$rt_modules"
}

# reviews: Maven Central's jars and Liberty's zip, each checked against its sha256 pin.
maven_dir="$downloads/bookinfo-maven"
# maven_get GROUP:ARTIFACT:VERSION[:TYPE] SHA256: the artifact, copied to $maven_dir.
maven_get() {
  local coords="$1" sha="$2" g a v t file tmp
  IFS=: read -r g a v t <<<"$coords"
  file="$a-$v.${t:-jar}"
  [[ -e "$maven_dir/$file" ]] && return 0
  mkdir -p "$maven_dir"
  tmp="$(mktemp -d "$downloads/.mvn.XXXXXX")"
  mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
    -Dartifact="$g:$a:$v${t:+:$t}" -Dtransitive=false -DoutputDirectory="$tmp"
  echo "$sha  $tmp/$file" | sha256sum -c -
  mv "$tmp/$file" "$maven_dir/$file"
  rm -rf "$tmp"
}
reviews_jars=()
for pin in ${KIND_TIER_BOOKINFO_REVIEWS_JARS//,/ }; do
  IFS=: read -r _g a v <<<"${pin%@*}"
  reviews_jars+=("$maven_dir/$a-$v.jar")
done
liberty_zip="$maven_dir/$(IFS=: read -r _g a v _t <<<"$KIND_TIER_BOOKINFO_LIBERTY"; echo "$a-$v.zip")"
fetch_maven() {
  local pin
  for pin in ${KIND_TIER_BOOKINFO_REVIEWS_JARS//,/ }; do
    maven_get "${pin%@*}" "${pin#*@}"
  done
  maven_get "$KIND_TIER_BOOKINFO_LIBERTY" "$KIND_TIER_BOOKINFO_LIBERTY_SHA256"
}

step "productpage: PyPI packages" "$pp_wheels" -- fetch_productpage
step "ratings: npm packages" "$rt_modules" -- fetch_ratings
step "reviews: Maven Central jars" "${reviews_jars[@]}" "$liberty_zip" -- fetch_maven

# --- reviews: the war, and the Liberty server it runs on ------------------------------------

# The war as reviews-application's Gradle build makes it (sourceCompatibility 1.8, the API jars
# provided, src/main/webapp as the web root), then Liberty's server: LibertyProjectServer's
# server.xml with the war in apps/, packaged by Liberty itself with only the features the
# server.xml names (jaxrs-2.0, jsonp-1.0), as upstream's kernel-slim image plus
# `featureUtility installServerFeatures` gives.
reviews_server="$work/reviews-server.tar.gz"
build_reviews() {
  local app="$src/reviews/reviews-application/src/main" tmp
  tmp="$(mktemp -d "$work/.reviews.XXXXXX")"
  mkdir -p "$tmp/war/WEB-INF/classes"
  local cp
  cp="$(printf '%s:' "${reviews_jars[@]}")"
  javac --release 8 -nowarn -encoding UTF-8 -cp "${cp%:}" -d "$tmp/war/WEB-INF/classes" \
    $(find "$app/java" -name '*.java' | sort)
  cp -r "$app/webapp/." "$tmp/war/"
  (cd "$tmp/war" && jar cf "$tmp/reviews-application-1.0.war" .)
  (cd "$tmp" && unzip -q "$liberty_zip")
  local server="$tmp/wlp/usr/servers/defaultServer"
  mkdir -p "$server/apps"
  cp "$src/reviews/reviews-wlpcfg/servers/LibertyProjectServer/server.xml" "$server/"
  cp "$tmp/reviews-application-1.0.war" "$server/apps/"
  "$tmp/wlp/bin/server" package defaultServer --include=minify --archive="$tmp/server.tar.gz"
  mv "$tmp/server.tar.gz" "$reviews_server"
  rm -rf "$tmp"
}
step "reviews: war and Liberty server" "$reviews_server" -- build_reviews

# --- Bases: Debian root file systems, one per language --------------------------------------

mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
mirror="${mirror:-http://deb.debian.org/debian}"
debs="$KIND_TIER_ROOT/debs"
base_dir() { echo "$KIND_TIER_DIR/rootfs/bookinfo-$1-$(printf '%s' "$2" | short)"; }
debootstrap_base() {
  local dir="$1" packages="$2"
  rm -rf "$dir.tmp" "$dir"
  mkdir -p "$debs"
  debootstrap --variant=minbase --cache-dir="$debs" --include="$packages" \
    "$KIND_TIER_DEBIAN_SUITE" "$dir.tmp" "$mirror"
  rm -rf "$dir.tmp/var/cache/apt/archives/"*.deb "$dir.tmp/var/lib/apt/lists/"*
  mv "$dir.tmp" "$dir"
}
declare -A base_packages=(
  [python]="$KIND_TIER_BOOKINFO_PYTHON_PACKAGES"
  [ruby]="$KIND_TIER_BOOKINFO_RUBY_PACKAGES"
  [node]="$KIND_TIER_BOOKINFO_NODE_PACKAGES"
  [java]="$KIND_TIER_BOOKINFO_JAVA_PACKAGES"
)
for lang in python ruby node java; do
  dir="$(base_dir "$lang" "${base_packages[$lang]}")"
  step "rootfs bookinfo-$lang" "$dir" -- debootstrap_base "$dir" "${base_packages[$lang]}"
done

# --- Images, built by the tier's dockerd -----------------------------------------------------

if [[ "${1:-}" == --no-images ]]; then
  if [[ $built == 1 ]]; then echo "bookinfo log:   $log"; else rm -f "$log"; fi
  ((${#failed[@]} == 0)) || { echo "kind tier: Bookinfo FAILED: ${failed[*]} (log: $log)" >&2; exit 1; }
  exit 0
fi

started_dockerd=0
cleanup() {
  if [[ $started_dockerd == 1 ]]; then bash "$here/dockerd.sh" stop >/dev/null || true; fi
}
trap cleanup EXIT

# image NAME CONTEXT: builds CONTEXT (with its Dockerfile) as NAME, quietly.
image() {
  docker build -q -t "$1" "$2"
}

build_images() {
  local ctx="$work/ctx" lang
  rm -rf "$ctx"
  mkdir -p "$ctx"
  # The bases: each root file system imported as an image of its own.
  for lang in python ruby node java; do
    tar -C "$(base_dir "$lang" "${base_packages[$lang]}")" --numeric-owner -c . |
      docker import - "bookinfo-up.local/bookinfo-base-$lang:$KIND_TIER_BOOKINFO_KEY"
  done
  local base="bookinfo-up.local/bookinfo-base"

  # productpage (src/productpage/Dockerfile): the requirements and the test requirements
  # installed from the downloads with their hashes (into a venv: Debian's python3 refuses pip
  # installs into its own site-packages), the unit tests run at build, gunicorn with gevent.
  mkdir -p "$ctx/productpage"
  cp -r "$src/productpage/." "$ctx/productpage/"
  cp -r "$pp_wheels" "$ctx/productpage/wheels"
  cat >"$ctx/productpage/Dockerfile" <<EOF
FROM $base-python:$KIND_TIER_BOOKINFO_KEY
WORKDIR /
COPY requirements.txt test-requirements.txt ./
COPY wheels /wheels
RUN python3 -m venv /opt/venv && \\
    /opt/venv/bin/pip install --no-index --find-links /wheels --no-cache-dir --require-hashes -r requirements.txt && \\
    /opt/venv/bin/pip install --no-index --find-links /wheels --no-cache-dir --require-hashes -r test-requirements.txt && \\
    rm -rf /wheels
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY productpage.py /opt/microservices/
COPY tests/unit/* /opt/microservices/
COPY templates /opt/microservices/templates
COPY static /opt/microservices/static
COPY requirements.txt /opt/microservices/
ENV FLOOD_FACTOR=0
EXPOSE 9080
WORKDIR /opt/microservices
RUN python -m unittest discover
CMD ["gunicorn", "-b", "[::]:9080", "productpage:app", "-w", "8", "--keep-alive", "2", "-k", "gevent"]
USER 1000
EOF
  image "$hub/examples-bookinfo-productpage-v1:$tag" "$ctx/productpage"

  # details (src/details/Dockerfile, docker-bake's service_version v1): Debian's ruby and
  # ruby-webrick instead of `bundle install` of the webrick gem.
  mkdir -p "$ctx/details"
  cp "$src/details/details.rb" "$ctx/details/"
  cat >"$ctx/details/Dockerfile" <<EOF
FROM $base-ruby:$KIND_TIER_BOOKINFO_KEY
WORKDIR /opt/microservices
COPY details.rb /opt/microservices/
ENV SERVICE_VERSION=v1
ENV ENABLE_EXTERNAL_BOOK_SERVICE=false
EXPOSE 9080
CMD ["ruby", "details.rb", "9080"]
USER 1000
EOF
  image "$hub/examples-bookinfo-details-v1:$tag" "$ctx/details"

  # ratings (src/ratings/Dockerfile, service_version v1): the npm packages from `npm ci`.
  mkdir -p "$ctx/ratings"
  cp "$src/ratings/package.json" "$src/ratings/ratings.js" "$ctx/ratings/"
  cp -r "$rt_modules/node_modules" "$ctx/ratings/node_modules"
  cat >"$ctx/ratings/Dockerfile" <<EOF
FROM $base-node:$KIND_TIER_BOOKINFO_KEY
ENV SERVICE_VERSION=v1
COPY package.json /opt/microservices/
COPY ratings.js /opt/microservices/
COPY node_modules /opt/microservices/node_modules
WORKDIR /opt/microservices
EXPOSE 9080
CMD ["node", "/opt/microservices/ratings.js", "9080"]
USER 1000
EOF
  image "$hub/examples-bookinfo-ratings-v1:$tag" "$ctx/ratings"

  # reviews (src/reviews/Dockerfile): the minified Liberty server in /opt/ol/wlp, as the
  # open-liberty image lays it out (owned by 1001, group 0; /opt/ibm/wlp pointing there too,
  # where the plan's manifests mount an emptyDir on wlp/output), then one image per version
  # with docker-bake's arguments: v1 (no ratings), v2 (ratings, black stars), v3 (red).
  mkdir -p "$ctx/reviews"
  tar -C "$ctx/reviews" -xzf "$reviews_server"
  cat >"$ctx/reviews/Dockerfile" <<EOF
FROM $base-java:$KIND_TIER_BOOKINFO_KEY
RUN mkdir -p /opt/ibm && ln -s /opt/ol/wlp /opt/ibm/wlp
COPY --chown=1001:0 wlp /opt/ol/wlp
ENV SERVERDIRNAME=reviews
ENV WLP_OUTPUT_DIR=/opt/ol/wlp/output
ENV LOG_DIR=/logs
RUN mkdir -p /logs /opt/ol/wlp/output && chown 1001:0 /logs /opt/ol/wlp/output
EXPOSE 9080
CMD ["/opt/ol/wlp/bin/server", "run", "defaultServer"]
USER 1001
EOF
  image "bookinfo-up.local/bookinfo-reviews-base:$KIND_TIER_BOOKINFO_KEY" "$ctx/reviews"
  local v ratings color
  for v in v1 v2 v3; do
    case $v in
      v1) ratings=false color=black ;;
      v2) ratings=true color=black ;;
      v3) ratings=true color=red ;;
    esac
    mkdir -p "$ctx/reviews-$v"
    printf 'FROM bookinfo-up.local/bookinfo-reviews-base:%s\nENV SERVICE_VERSION=%s\nENV ENABLE_RATINGS=%s\nENV STAR_COLOR=%s\n' \
      "$KIND_TIER_BOOKINFO_KEY" "$v" "$ratings" "$color" >"$ctx/reviews-$v/Dockerfile"
    image "$hub/examples-bookinfo-reviews-$v:$tag" "$ctx/reviews-$v"
  done
  rm -rf "$ctx"

  # A smoke test of each image, with no network: the language runtime starts the service's
  # code far enough to load it.
  docker run --rm --network none "$hub/examples-bookinfo-productpage-v1:$tag" python -c 'import productpage'
  docker run --rm --network none "$hub/examples-bookinfo-details-v1:$tag" ruby -c details.rb
  docker run --rm --network none "$hub/examples-bookinfo-ratings-v1:$tag" node --check ratings.js
  docker run --rm --network none "$hub/examples-bookinfo-reviews-v1:$tag" /opt/ol/wlp/bin/server version
  local name
  for name in productpage-v1 details-v1 ratings-v1 reviews-v1 reviews-v2 reviews-v3; do
    docker image inspect --format '{{index .RepoTags 0}}: {{.Size}} bytes' "$hub/examples-bookinfo-$name:$tag"
  done
  # Images of an earlier Bookinfo key (their bases, reviews' base) are left untagged or
  # stale: remove them.
  docker images --format '{{.Repository}}:{{.Tag}}' |
    { grep -E '^bookinfo-up.local/bookinfo-(base-[a-z]+|reviews-base):' || true; } |
    { grep -v ":$KIND_TIER_BOOKINFO_KEY\$" || true; } | xargs -r docker rmi
  docker image prune -f
  # So are the work folders of earlier keys.
  find "$KIND_TIER_DIR/src" -mindepth 1 -maxdepth 1 -name 'bookinfo-*' \
    ! -name "bookinfo-$KIND_TIER_BOOKINFO_KEY" -exec rm -rf {} +
  mkdir -p "$stamps"
  rm -f "$stamps"/bookinfo-*
  touch "$stamp"
}
if [[ ! -e "$stamp" ]] && ((${#failed[@]} == 0)); then
  bash "$here/dockerd.sh" status >/dev/null 2>&1 || started_dockerd=1
  eval "$(bash "$here/dockerd.sh" start)"
  export DOCKER_BUILDKIT=0
fi
step "bookinfo images ($tag)" "$stamp" -- build_images

if [[ $built == 1 ]]; then echo "bookinfo log:   $log"; else rm -f "$log"; fi
if ((${#failed[@]})); then
  echo "kind tier: Bookinfo's images FAILED: ${failed[*]} (log: $log)" >&2
  exit 1
fi
