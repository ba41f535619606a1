#!/usr/bin/env bash
# The test suite (slow cases are marked and run as benchmarks instead).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest -q "$@"
