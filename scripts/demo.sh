#!/usr/bin/env bash
# The main job on the embedded default: set-up, emoji data (built if missing), shipped model, retrieval table, queries,
# then the same nine example queries as prompts to the shipped generator (runs/demo/generations.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m index demo "$@"
exec .venv/bin/python -m diffusion demo --per-prompt 2
