#!/usr/bin/env bash
# Idempotent set-up: .venv (Python 3.11) with tf_ecqx editable + dev extras, iNNvestigate without its stale pins,
# and the Debian Fashion-MNIST files when apt is usable. Quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
STAMP=.venv/.tf_ecqx-setup
INPUTS="pyproject.toml tools/setup.sh"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

if [ ! -f "$STAMP" ] || [ -n "$(find $INPUTS -newer "$STAMP" 2>/dev/null)" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev,datasets]"
  # innvestigate 2.1.2 pins TF<2.15 and numpy<2 in its metadata but runs on TF 2.21 + tf_keras in graph mode.
  .venv/bin/python -m pip install --quiet --no-deps "innvestigate==2.1.2" future
  touch "$STAMP"
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/t10k-labels-idx1-ubyte.gz" ] && [ -z "${TF_ECQX_FASHION_MNIST_DIR:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist with apt; tests needing Fashion-MNIST will say so" >&2
  else
    echo "setup: apt-get not usable here; install dataset-fashion-mnist or set TF_ECQX_FASHION_MNIST_DIR" >&2
  fi
fi
