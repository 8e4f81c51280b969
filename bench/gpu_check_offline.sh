#!/usr/bin/env bash
# `make gpu-check` on a GPU machine with no package index: one command, from a checkout that carries
# .bundle/ (`make gpu-bundle` builds it where pip works). The machine's own CUDA jax is used; the
# bundle's wheels go into a fresh temporary folder (PLANCK_SITE to name one), ahead of the machine's
# packages on PYTHONPATH, removed afterwards.
#   bash bench/gpu_check_offline.sh [gpu_check.py's arguments]     (PYTHON=..., OUT=... as for make gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -n "${PLANCK_SITE:-}" ]; then
    SITE=$PLANCK_SITE
else
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/planck-site.XXXXXX")
    trap 'rm -rf "$SITE"' EXIT
fi
"$PY" bench/offline_bundle.py install --bundle .bundle --target "$SITE"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PLANCK_BPE_FILE="$PWD/.bundle/tokenizer/r50k_base.tiktoken"
export PYTHONUNBUFFERED=1
"$PY" bench/gpu_check.py --out "${OUT:-bench/results}" "$@"
