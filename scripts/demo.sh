#!/usr/bin/env bash
# The main job on the embedded default: set-up, emoji data (built if missing), shipped model, retrieval table, queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m index demo "$@"
