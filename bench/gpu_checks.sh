#!/usr/bin/env bash
# The GPU checks as one prepared script for a bare CUDA machine (no Django, PostgreSQL or Redis needed):
#   OUT=<folder> bash bench/gpu_checks.sh
# 1. trains the shapes-world model with the `gpu` preset and exports it to $OUT as a split tarball
#    (shapes_export.tgz.aa, .ab, ...: `cat $OUT/shapes_export.tgz.* | tar xz` gives shapes_export/);
# 2. runs bench/generation_gpu.py (issue 5 (c)).
# About 8 minutes in all on an H200: give the device call its 600 s limit.
# Python packages missing there travel as wheels in .whl/ (see bench/README.md) and are installed first.
set -u
OUT=${OUT:-var/gpu_checks}
PY=${PYTHON:-python3}
SHAPES_MINUTES=${SHAPES_MINUTES:-4}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"

started=$(date +%s)
timeout $((${SHAPES_MINUTES%.*} * 60 + 200)) $PY -m generation.shapes.train --preset gpu --run-dir /tmp/shapes_run \
    --max-minutes "$SHAPES_MINUTES" >"$OUT/shapes_train.log" 2>&1
echo "shapes training: exit $?, $(($(date +%s) - started)) s"; grep -v "it/s\]" "$OUT/shapes_train.log" | tail -8
if $PY -m generation.shapes.train --preset gpu --run-dir /tmp/shapes_run --export /tmp/shapes_export >>"$OUT/shapes_train.log" 2>&1; then
    tar czf - -C /tmp shapes_export | split -b 15M - "$OUT/shapes_export.tgz."
    ls -la "$OUT"
else
    echo "shapes export failed"; tail -20 "$OUT/shapes_train.log"
fi

timeout 150 $PY -m bench.generation_gpu --json "$OUT/generation_gpu.json" >"$OUT/generation_gpu.log" 2>&1
echo "generation bench: exit $?"; grep -v "Loading\|it/s\]" "$OUT/generation_gpu.log" | tail -14
