#!/usr/bin/env bash
# `make gpu-check` on a GPU machine with no package index: one command, from a checkout that carries
# .bundle/ (`make gpu-bundle` builds it where pip works). The machine's own CUDA jax is used; the
# bundle's wheels go into $PLANCK_SITE, ahead of the machine's packages on PYTHONPATH.
#   bash bench/gpu_check_offline.sh [gpu_check.py's arguments]     (PYTHON=..., OUT=... as for make gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${PLANCK_SITE:-/tmp/planck-site}
"$PY" bench/offline_bundle.py install --bundle .bundle --target "$SITE"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PLANCK_BPE_FILE="$PWD/.bundle/tokenizer/r50k_base.tiktoken"
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py --out "${OUT:-bench/results}" "$@"
