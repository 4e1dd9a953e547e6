#!/usr/bin/env bash
# Every check graphseq still owes a GPU, in one pass of about eight and a half minutes, for a
# session that is lent one for a short while. Results go to $OUT (default gpu_checks/):
#
#   gpu.txt      the card, driver and library versions
#   pytest.txt   the kernel and pLSTM tests on CUDA (Triton compiled, not interpreted)
#   bench.txt    the kernel bench, Triton against the PyTorch path and the loop in one run
#   kernels.json the same figures, machine-readable
#   arrow.txt    seconds per training step of PLSTMVision and the ViT in arrow pointing,
#                to size the paper-budget run that BENCHMARKS.md gives
#
# Usage: bash scripts/gpu_checks.sh          (on the GPU machine, from the repository root)
#        DEVICE=cpu bash scripts/gpu_checks.sh (a dry run of the plumbing on a CPU machine)
# Budgets in seconds per stage: TEST_S (default 240), BENCH_S (120), ARROW_S (60, twice):
# 480 s in all plus the install, inside the device tool's 600 s per command.
# The machine needs torch, triton and torch_geometric already installed: the package is
# installed without its dependencies and without the network.
set -uo pipefail
OUT=${OUT:-gpu_checks}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stage() { echo "== $* ($(date +%T))"; }

stage environment
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    # pyproject.toml needs setuptools>=77 (its SPDX license string), which an offline machine
    # may lack: import the working tree through a folder of links instead, with the top-level
    # kernels/ and datasets/ as graphseq.kernels / graphseq.datasets, as the install maps them
    echo "editable install failed: graphseq is imported from the working tree through links"
    shim="$(mktemp -d)/site"
    mkdir -p "$shim/graphseq"
    for f in "$PWD"/graphseq/*; do ln -s "$f" "$shim/graphseq/"; done
    ln -s "$PWD/kernels" "$shim/graphseq/kernels"
    ln -s "$PWD/datasets" "$shim/graphseq/datasets"
    # PYTHONSAFEPATH (Python 3.11+): python -m must not put the repository root, whose
    # graphseq/ has no kernels/, ahead of the links
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    "$PY" -c "import graphseq.kernels.linear_scan" || exit 1
fi
"$PY" - << 'EOF' 2>&1 | tee -a "$OUT/gpu.txt"
import platform
import torch, torch_geometric, graphseq
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "absent"
card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__}, triton {tv}, "
      f"torch_geometric {torch_geometric.__version__}, graphseq {graphseq.__version__}; {card}")
EOF
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "DEVICE=cuda but torch sees no CUDA device"; exit 1; }
fi

stage "kernel and pLSTM tests (budget ${TEST_S:-240} s)"
# on a CUDA machine graphseq.testing.DEVICE is the GPU and TRITON_INTERPRET stays unset
workers=()  # pytest-xdist, where installed: Triton compiles in parallel
"$PY" -c "import xdist" 2> /dev/null && workers=(-n 4)
timeout "${TEST_S:-240}" "$PY" -m pytest tests/kernels tests/nn/plstm -q -p no:cacheprovider \
    -m "not slow" "${workers[@]}" > "$OUT/pytest.txt" 2>&1
echo "pytest exit code $?" | tee -a "$OUT/pytest.txt"
tail -n 5 "$OUT/pytest.txt"

stage "kernel bench (budget ${BENCH_S:-120} s)"
backend=()
[ "$DEVICE" = cuda ] && backend=(--backend triton)
timeout "${BENCH_S:-120}" "$PY" -m graphseq.kernels.bench "${backend[@]}" --device "$DEVICE" \
    --repeats 10 --out "$OUT/kernels.json" > "$OUT/bench.txt" 2>&1
echo "bench exit code $?" | tee -a "$OUT/bench.txt"
tail -n 30 "$OUT/bench.txt"

stage "arrow pointing step time (budget ${ARROW_S:-60} s)"
for batch in 128 512; do
    timeout "${ARROW_S:-60}" "$PY" examples/arrow_pointing.py --time-steps 20 \
        --batch-size "$batch" --device "$DEVICE" --threads 4 >> "$OUT/arrow.txt" 2>&1
    echo "arrow pointing (batch $batch) exit code $?" >> "$OUT/arrow.txt"
done
cat "$OUT/arrow.txt"
stage done
