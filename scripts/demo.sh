#!/usr/bin/env bash
# The newcomer's first command: install what is missing, then run a real elastic job on this
# machine (embedded Redis, several `rdzv run` agents, one killed and the job re-forming).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 examples/demo.py "$@"
