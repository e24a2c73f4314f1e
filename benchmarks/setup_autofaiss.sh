#!/usr/bin/env bash
# A separate virtual environment for the autofaiss side of benchmarks/search.py.
# autofaiss needs numpy<2 and a pyarrow built for numpy 1.x (<17); the main .venv carries numpy 2
# (torch, onnxruntime), so autofaiss runs in its own venv, in a subprocess. Idempotent.
#   bash benchmarks/setup_autofaiss.sh [VENV_DIR]    (default runs/bench/autofaiss-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-runs/bench/autofaiss-venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import autofaiss, faiss, numpy" >/dev/null 2>&1; then
  echo "installing autofaiss into $VENV ..." >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "numpy<2" "pyarrow<17" autofaiss faiss-cpu >&2
fi
"$VENV/bin/python" -c "import autofaiss, faiss, numpy; print(f'autofaiss {autofaiss.__version__ if hasattr(autofaiss, \"__version__\") else \"?\"}, faiss {faiss.__version__}, numpy {numpy.__version__}')"
