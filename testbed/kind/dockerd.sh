#!/usr/bin/env bash
# The kind tier's own Docker daemon (Debian's docker.io), started and stopped on demand:
#   bash testbed/kind/dockerd.sh start   # prints `export DOCKER_HOST=...`; idempotent
#   bash testbed/kind/dockerd.sh stop    # removes its containers and networks, stops it, and
#                                        # deletes the iptables rules and chains it added
#                                        # (those naming DOCKER* chains or br-* bridges)
#   bash testbed/kind/dockerd.sh status
# Nothing system-wide is used: its images live in <tier>/docker (kept between runs, so the
# node image is loaded once), its run state and socket in /run/bookinfo-up-kind-<hash> (the
# socket is group `docker`, reachable by that group's members), and containers run through
# testbed/kind/runc-drop-sys-resource, registered with --add-runtime and made the default.
# No default bridge (docker0) is made; kind makes its own network, removed again by `stop`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

# Named after the tier's folder, so that tiers in other caches (BOOKINFO_UP_KIND_CACHE) get
# daemons of their own.
run="/run/bookinfo-up-kind-$(printf '%s' "$KIND_TIER_DIR" | sha256sum | cut -c1-12)"
data="$KIND_TIER_DIR/docker"
sock="$run/docker.sock"
pidfile="$run/dockerd.pid"
export DOCKER_HOST="unix://$sock"

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# The iptables rules of each table, as `iptables -S` prints them, for the diff at stop.
rules() {
  local t
  for t in filter nat mangle raw; do
    iptables -w -t "$t" -S 2>/dev/null | sed "s/^/$t /"
  done
}

start() {
  if running && docker version >/dev/null 2>&1; then
    echo "export DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  [[ $(id -u) == 0 ]] || { echo "dockerd.sh start: needs root" >&2; exit 1; }
  command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd is missing: apt-get install docker.io" >&2; exit 1; }
  mkdir -p "$run" "$data"
  # What was there before this daemon: `stop` deletes only what it added.
  rules >"$run/iptables.before"
  cat /proc/sys/net/ipv4/ip_forward >"$run/ip_forward.before"
  ip -o link show type bridge | awk -F': ' '{print $2}' | sort >"$run/bridges.before"
  local group=()
  getent group docker >/dev/null && group=(--group docker)
  # dockerd starts its own containerd (state under $run/containerd, content under $data).
  setsid dockerd \
    --data-root "$data" --exec-root "$run/exec" --pidfile "$pidfile" -H "$DOCKER_HOST" "${group[@]}" \
    --bridge none --storage-driver overlay2 \
    --add-runtime "runc-drop-sys-resource=$here/runc-drop-sys-resource" \
    --default-runtime runc-drop-sys-resource \
    >"$run/dockerd.log" 2>&1 </dev/null &
  local i
  for ((i = 0; i < 300; i++)); do
    if docker version >/dev/null 2>&1; then
      chmod 755 "$run"
      echo "export DOCKER_HOST=$DOCKER_HOST"
      return 0
    fi
    if ! kill -0 $! 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "dockerd did not start; its log ($run/dockerd.log):" >&2
  tail -20 "$run/dockerd.log" >&2
  stop >&2 || true
  exit 1
}

stop() {
  if running; then
    local ids
    ids="$(docker ps -aq 2>/dev/null || true)"
    [[ -z "$ids" ]] || docker rm -f -v $ids >/dev/null
    docker network prune -f >/dev/null 2>&1 || true
    docker volume prune -f >/dev/null 2>&1 || true
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  # Its containerd and shims, should any outlive it (they are found by their socket paths).
  local p
  for p in $(pgrep -f -- "$run/" 2>/dev/null || true); do
    kill "$p" 2>/dev/null || true
  done
  if [[ -f "$run/iptables.before" ]]; then
    # Rules added since start that are Docker's (they name its DOCKER* chains or the br-*
    # bridges of its networks; rules others added meanwhile stay), deleted in reverse order;
    # then the DOCKER* chains added.
    local table rest
    { rules | grep -vxFf "$run/iptables.before" | grep ' -A ' | grep -E 'DOCKER|br-' || true; } | tac | while read -r table rest; do
      # shellcheck disable=SC2086
      iptables -w -t "$table" ${rest/-A /-D } 2>/dev/null || true
    done
    { rules | grep -vxFf "$run/iptables.before" | grep -E ' -N DOCKER' || true; } | while read -r table rest; do
      iptables -w -t "$table" -X "${rest#-N }" 2>/dev/null || true
    done
    # Policies it changed (dockerd sets FORWARD to DROP), put back.
    grep ' -P ' "$run/iptables.before" | while read -r table rest; do
      # shellcheck disable=SC2086
      iptables -w -t "$table" $rest 2>/dev/null || true
    done
  fi
  # dockerd turns on IP forwarding; put back what was there.
  [[ ! -f "$run/ip_forward.before" ]] || cat "$run/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
  if [[ -f "$run/bridges.before" ]]; then
    local br
    for br in $(ip -o link show type bridge | awk -F': ' '{print $2}' | sort | comm -13 "$run/bridges.before" -); do
      [[ "$br" == br-* ]] && ip link delete "$br" 2>/dev/null || true
    done
  fi
  # Mounts dockerd may leave under its folders when killed.
  { grep -oE " ($run|$data)/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$run"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status)
  if running; then echo "running (pid $(cat "$pidfile")), DOCKER_HOST=$DOCKER_HOST"; else echo "stopped"; exit 1; fi
  ;;
*)
  echo "usage: $0 start|stop|status" >&2
  exit 2
  ;;
esac
