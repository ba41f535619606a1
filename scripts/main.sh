#!/usr/bin/env bash
# The main job: a short Fashion-MNIST run of BP + contrastive hinge, then its per-stage probe
# table beside the random-init encoder (a few minutes on 2 CPU cores). Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/main}
if [ -f "$OUT/config.yaml" ]; then  # resumes (or restarts a run killed before its first checkpoint)
  biossl train --resume "$OUT"
else
  biossl train fmnist-bp-hinge --out "$OUT" "$@"
fi
biossl eval "$OUT"
