#!/usr/bin/env bash
# Install what rdzv needs on a bare Debian/Ubuntu machine (idempotent).
#   bash scripts/install.sh            -> servers + rdzv with its Redis extra (for the demo)
#   bash scripts/install.sh --all      -> servers + rdzv with every extra and torch (for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
all=0; [ "${1:-}" = "--all" ] && all=1

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ "$all" = 1 ]; then
  command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)  # the network lab (tests/netlab): ip netns, veth, bridge
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the packaged services; rdzv starts its own servers on free ports.
  for svc in redis-server redis-sentinel etcd; do
    $sudo_ service "$svc" stop >/dev/null 2>&1 || true
  done
fi

pip_() { python3 -m pip install -q --disable-pip-version-check "$@"; }
if [ "$all" = 1 ]; then
  # torch is optional for users; the tests exercise torchrun. 2.13.0 is the local CPU build.
  python3 -c "import torch" >/dev/null 2>&1 || pip_ torch==2.13.0
  pip_ -e '.[all]'
else
  pip_ -e '.[redis]'
fi
