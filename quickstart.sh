#!/usr/bin/env bash
# One command from a fresh clone to a running research loop on the CPU: no GPU, no network, no keys.
# Makes .venv, installs autoresearch, prepares the Python-source corpus for the tiny preset, creates
# the workspace demo/ and runs the offline tune agent for 10 experiments. Run it again to continue.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet torch==2.13.0  # the CPU build; a CUDA build you install yourself is kept
fi
.venv/bin/pip install --quiet -e .
[ -f demo/autoresearch.json ] || .venv/bin/autoresearch init demo --preset tiny --dataset python-source
cd demo
../.venv/bin/autoresearch run --agent tune --max-experiments "${EXPERIMENTS:-10}"
