#!/usr/bin/env bash
# Issue 18's table: step time and peak memory of every layer-wise and simultaneous-local
# cell (every greedy stage) and of DTP against e2e-bp, on conv6 (Bio-SSL Table 1) and vgg6
# (Table 2), at batch 256 and 500, measured in one process per encoder (ratios per batch).
#   bash benchmarks/depth.sh                                  # CPU, 1 thread, random inputs
#   bash benchmarks/depth.sh --set train.channels_last=true   # CPU channels-last (faster)
#   bash benchmarks/depth.sh --set train.device=cuda          # a GPU (memory: max allocated)
#   bash benchmarks/depth.sh --set train.device=cuda --set train.precision=bf16 \
#        --set train.channels_last=true --set train.compile=true   # the issue's GPU table (× bf16 matmul)
# The local cells learn in row chunks (train.stage_chunks, default 4 here: STAGE_CHUNKS=1 for
# the unchunked rules); DTP is benched with the default (no chunks) and with them. Memory alone, one cell at a time (deterministic, fine under load):
# benchmarks/depth_memory.py with the same cells (MEMORY_ONLY=1 runs it instead of bench).
# Extra arguments go to both calls. On a 2-core CPU the conv6 call takes
# about an hour at 1 thread; vgg6 at 64×64 with 1024 channels is for a GPU when timed (an
# e2e-bp step at batch 500 takes minutes on a core); its memory pass (MEMORY_ONLY=1) runs
# on the CPU in ~1.5 h (e2e-bp at batch 500 peaks at 16.6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
fb="transport.name=urf transport.diagnostics_every=0 train.stage_chunks=${STAGE_CHUNKS:-4}"
if [[ -n "${MEMORY_ONLY:-}" ]]; then
  run=(python benchmarks/depth_memory.py); common=(--batch 256 --batch 500 --set train.threads=1)
else
  run=(python -m biossl bench); common=(--batch 256 --batch 500 --steps 6 --warmup 1 --set train.threads=1)
fi
"${run[@]}" biossl-t1 \
  "biossl-t1@all schedule.name=greedy train.epochs=5 $fb" \
  "biossl-t1 schedule.name=random $fb" \
  "biossl-t1 schedule.name=simultaneous $fb" \
  "biossl-t1-dtp transport.diagnostics_every=0 transport.inverse_warmup=0" \
  "biossl-t1-dtp transport.diagnostics_every=0 transport.inverse_warmup=0 train.stage_chunks=${STAGE_CHUNKS:-4}" \
  "${common[@]}" --out results/bench-depth-conv6.json "$@"
"${run[@]}" biossl-t2 \
  "biossl-t2@all schedule.name=greedy train.epochs=6 $fb" \
  "biossl-t2 schedule.name=random $fb" \
  "biossl-t2 schedule.name=simultaneous $fb" \
  "${common[@]}" --out results/bench-depth-vgg6.json "$@"
