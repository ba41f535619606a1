#!/usr/bin/env bash
# Installs what biossl needs on a fresh machine: the Fashion-MNIST Debian package and the
# package itself with torch pinned to the local CPU wheel (an unpinned torch pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${BIOSSL_DATA:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "warning: could not install dataset-fashion-mnist; set BIOSSL_DATA to a folder with the IDX files" >&2
  else
    echo "note: install Fashion-MNIST with 'sudo apt-get install dataset-fashion-mnist' or set BIOSSL_DATA" >&2
  fi
fi
# The generated speech corpus speaks with libespeak-ng (Debian package espeak-ng).
if ! ldconfig -p 2>/dev/null | grep -q libespeak-ng.so.1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null \
      || echo "warning: could not install espeak-ng; the espeak-speech corpus cannot be generated" >&2
  else
    echo "note: the espeak-speech corpus needs 'sudo apt-get install espeak-ng'" >&2
  fi
fi
# every import the package and its tests need: a machine with an older biossl gets the new ones
if ! python -c "import biossl, torch, pytest, av, soundfile, librosa" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0" 2>/dev/null || python -m pip install -q "torch<=2.13.0"
  python -m pip install -q -e '.[dev]'
fi
