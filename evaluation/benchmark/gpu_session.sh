#!/usr/bin/env bash
# The GPU benchmark in two steps (see evaluation/benchmark/README.md):
#   bash evaluation/benchmark/gpu_session.sh prepare [REFERENCE_GIT_DIR]   # here, with network/PyPI
#   bash evaluation/benchmark/gpu_session.sh run [LEVELS...]               # on the GPU machine
# "prepare" puts what the GPU machine lacks under runs/gpu-carry/ (gitignored, ~10 MiB): the pure
# wheels Keras needs beside JAX/PyTorch (keras, namex, optree, absl-py, h5py, rich and its two
# dependencies, tqdm), yacs and munkres for the reference, and the authors' lib/ and example
# configs exported from a git checkout (never committed here). "run" installs those wheels into
# runs/gpu-carry/site (no network), then runs `python -m evaluation.benchmark gpu` with each
# measurement group under its own time limit so one slow group cannot take the others' time.
# Results: $OUT/gpu.json and $OUT/gpu.md (OUT defaults to runs/gpu); rows are appended to
# $OUT/.gpu.json.rows as they are measured, so a run cut short still returns what it finished.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=runs/gpu-carry
WHEEL_PACKAGES=(keras namex optree absl-py h5py rich markdown-it-py mdurl pygments packaging tqdm yacs munkres)

case "${1:-}" in
prepare)
    reference_git=${2:-/work/.mirror/TeCSAR-UNCC+EfficientHRNet/repo}
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/reference"
    # Binary wheels (optree, h5py) for the Python versions the GPU machine may have.
    for py in 3.10 3.11 3.12 3.13; do
        pip download -q --only-binary=:all: --no-deps --python-version "$py" \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            -d "$CARRY/wheels" "${WHEEL_PACKAGES[@]}" || echo "note: some wheels missing for Python $py"
    done
    git --git-dir="$reference_git" archive HEAD lib "Example Configs" | tar -x -C "$CARRY/reference"
    find "$CARRY/reference" -name __pycache__ -prune -exec rm -rf {} +
    du -sh "$CARRY"
    echo "carry: [\"$CARRY\"] (the run tool's carry argument)"
    ;;
run)
    shift
    levels=("$@")
    [ ${#levels[@]} -eq 0 ] && levels=(H-4 H-3 H-2 H-1 H0)
    OUT=${OUT:-runs/gpu}
    mkdir -p "$OUT" "$CARRY/site"
    python -m pip install -q --no-index --no-deps --find-links "$CARRY/wheels" --target "$CARRY/site" \
        "${WHEEL_PACKAGES[@]}"
    export PYTHONPATH="$PWD/$CARRY/site:$PWD"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python -c "import torch, jax, keras; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('jax', jax.__version__, jax.devices()); print('keras', keras.__version__)"
    common=(--device cuda --levels "${levels[@]}" --batches 1 8 --warmup 5 --runs 30 --train-batch 16
        --train-steps 10 --reference "$CARRY/reference")
    # One group per call, each capped, all into the same JSON (the later calls add their rows).
    for group in reference jax torch; do
        timeout "${GROUP_TIMEOUT:-170}" python -m evaluation.benchmark gpu "${common[@]}" --groups "$group" \
            --json "$OUT/gpu-$group.json" --markdown "$OUT/gpu-$group.md" || echo "group $group: exit $?"
    done
    python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from evaluation.benchmark.gpu import markdown
out = Path(sys.argv[1])
parts = [json.loads(p.read_text()) for p in sorted(out.glob("gpu-*.json"))]
rows = [r for p in parts for r in p["rows"]]
for rows_file in out.glob(".gpu-*.json.rows"):  # groups cut off by their timeout
    rows += [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
report = {"environment": parts[0]["environment"] if parts else {}, "rows": rows}
(out / "gpu.json").write_text(json.dumps(report, indent=1))
(out / "gpu.md").write_text(markdown(report))
print(markdown(report))
EOF
    ;;
*)
    echo "usage: $0 prepare [REFERENCE_GIT_DIR] | run [LEVELS...]" >&2
    exit 2
    ;;
esac
