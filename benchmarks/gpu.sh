#!/usr/bin/env bash
# One-shot GPU check + benchmark (see benchmarks/gpu.py). Run from anywhere:
#   benchmarks/gpu.sh            # on the GPU machine; results under $OUT or benchmarks/results
#   benchmarks/gpu.sh --smoke    # on CPU, Triton's interpreter, tiny shapes
#   with textblob for the rewards section: `make gpu-wheels` here, then the device call
#   carries .whl (run(command="benchmarks/gpu.sh", carry=[".whl"]))
# The hard timeout is a last resort: the script keeps its own deadline (--budget, 450 s)
# and writes its JSON after every measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if compgen -G ".whl/*.whl" >/dev/null; then  # textblob + nltk for the rewards section
    SITE="$(mktemp -d)"
    trap 'rm -rf "$SITE"' EXIT
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$SITE"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
timeout --signal=INT --kill-after=20 540 "$PY" benchmarks/gpu.py "$@"  # not exec: the trap cleans up
