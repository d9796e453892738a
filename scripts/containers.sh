#!/usr/bin/env bash
# The container pass of the integration tests (#18): a private Docker engine, images built
# locally from the installed Debian binaries (no registry), the suites run through testcontainers.
#
#   bash scripts/containers.sh                  -> engine + images, run the container suites, stop
#   bash scripts/containers.sh CMD [ARGS...]    -> engine + images, run CMD instead (for example
#                                                  python3 -m pytest -q tests/integration/test_redis_store.py)
#
# The engine is this script's own dockerd: data root, exec root, pid file and socket in a temp
# dir, --bridge=none --iptables=false --ip6tables=false (containers use the host network, all
# traffic stays on 127.0.0.1; no bridge, no iptables rule, no network configuration touched).
# It is stopped and its temp dir removed on exit, also when the tests fail or are interrupted.
# Images: rdzv-local/redis:7.0 (redis-server; redis-sentinel is the same binary) and
# rdzv-local/etcd:3.4, each the binary plus the shared libraries `ldd` lists and the loader,
# put together with `docker import`. Needs root (or sudo) for apt and dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REDIS_IMAGE=rdzv-local/redis:7.0
ETCD_IMAGE=rdzv-local/etcd:3.4
# The suites of the container pass: every Redis, Sentinel and etcd suite that starts servers
# through the fixtures, with their faults (kill, pause, restart). The binary pass (.ci/run)
# runs the whole suite; TLS, cluster, torch and launcher tests stay binary-only (the etcd
# 3-member cluster runs binaries, so it is deselected here).
CONTAINER_SUITES=(
  tests/integration/test_redis_store.py
  tests/integration/test_redis_backend.py
  tests/integration/test_redis_rendezvous.py
  tests/integration/test_redis_membership.py
  tests/integration/test_reliability_redis.py
  tests/integration/test_reliability_sentinel.py
  tests/integration/test_etcd_store.py
  tests/integration/test_etcd_backend.py
  tests/integration/test_etcd_rendezvous.py
  tests/integration/test_reliability_etcd.py
  tests/integration/test_churn.py
  tests/integration/test_containers.py
)
DAEMON_DEADLINE=${RDZV_DOCKERD_DEADLINE:-60}

sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
say() { echo "[containers] $*" >&2; }

# -- docker.io -----------------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
  say "installing docker.io"
  # Keep Debian from starting the packaged daemon (it would create docker0 and iptables rules):
  # a policy-rc.d that denies every start, for the time of the install, unless one exists.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo_ tee "$policy" >/dev/null
    $sudo_ chmod 755 "$policy"
  fi
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null \
    || { $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
  [ -z "$policy" ] || $sudo_ rm -f "$policy"
fi

# -- a private dockerd -----------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/rdzv-docker.XXXXXX")
export DOCKER_HOST="unix://$work/docker.sock"

stop_daemon() {
  local rc=$? pid=""
  trap - EXIT INT TERM
  [ -f "$work/dockerd.pid" ] && pid=$(cat "$work/dockerd.pid")
  [ -n "$pid" ] || pid=${daemon_pid:-}
  if [ -n "$pid" ] && $sudo_ kill -0 "$pid" 2>/dev/null; then
    ids=$(docker ps -aq --filter label=rdzv.test 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    $sudo_ kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do $sudo_ kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if $sudo_ kill -0 "$pid" 2>/dev/null; then say "dockerd $pid did not stop in 30 s: SIGKILL"; $sudo_ kill -KILL "$pid" || true; fi
  fi
  # containerd, started by this dockerd, stops with it; whatever is still mounted under the
  # temp dir (an overlay of a container that was killed) is unmounted before it is removed
  grep -o " $work/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r mnt; do $sudo_ umount -l "$mnt" || true; done
  $sudo_ rm -rf "$work"
  exit "$rc"
}
trap stop_daemon EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting dockerd in $work"
$sudo_ dockerd \
  --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
  -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  >"$work/dockerd.log" 2>&1 &
daemon_pid=$!
deadline=$((SECONDS + DAEMON_DEADLINE))
until docker version >/dev/null 2>&1; do
  if ! $sudo_ kill -0 "$daemon_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    say "dockerd did not answer within ${DAEMON_DEADLINE} s; its log:"
    cat "$work/dockerd.log" >&2
    exit 1
  fi
  sleep 0.2
done
say "dockerd $(docker version --format '{{.Server.Version}}') answers at $DOCKER_HOST"

# -- images from the installed binaries --------------------------------------------------------
# build_image NAME ENTRYPOINT BINARY [LINK...]: BINARY (symlinks resolved) as /usr/bin/ENTRYPOINT,
# every library `ldd` lists and the loader at their paths, /usr/bin/LINK -> ENTRYPOINT, /tmp.
build_image() {
  local name=$1 entry=$2 binary; binary=$(readlink -f "$(command -v "$3")"); shift 3
  local root="$work/rootfs-${entry}"
  mkdir -p "$root/usr/bin" "$root/etc" "$root/tmp" && chmod 1777 "$root/tmp"
  cp "$binary" "$root/usr/bin/$entry"
  for link in "$@"; do ln -s "$entry" "$root/usr/bin/$link"; done
  { ldd "$binary" || true; } | grep -o '/[^ ]*' | sort -u | while read -r lib; do cp -L --parents "$lib" "$root/"; done
  tar -C "$root" -c . | docker import \
    -c "ENTRYPOINT [\"/usr/bin/$entry\"]" -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$name" >/dev/null
  rm -rf "$root"
  say "built $name ($(docker image inspect --format '{{.Size}}' "$name") bytes) from $binary"
}
command -v redis-server >/dev/null && command -v etcd >/dev/null \
  || bash scripts/install.sh --all
build_image "$REDIS_IMAGE" redis-server redis-server redis-sentinel
build_image "$ETCD_IMAGE" etcd etcd

# -- the tests ----------------------------------------------------------------------------------
export RDZV_TEST_SERVERS=containers RDZV_REDIS_IMAGE="$REDIS_IMAGE" RDZV_ETCD_IMAGE="$ETCD_IMAGE"
export TESTCONTAINERS_RYUK_DISABLED=true
if [ $# -gt 0 ]; then
  "$@"
else
  # the header names the provider: "test servers: testcontainers (rdzv-local/redis:7.0, ...)"
  "$PYTHON" -m pytest -p no:cacheprovider "${CONTAINER_SUITES[@]}" \
    --deselect tests/integration/test_reliability_etcd.py::test_three_member_cluster_survives_losing_its_leader
fi
