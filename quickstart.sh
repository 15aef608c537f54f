#!/usr/bin/env bash
# One command from a fresh clone to a running research loop on the CPU: no GPU, no network, no keys.
# Makes .venv, installs autoresearch, prepares the Python-source corpus for the tiny preset, creates
# the workspace demo/ and runs the offline tune agent for 10 experiments. Run it again to continue.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n== %s\n' "$*"; }
say "1/4 a virtual environment in .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  own_index() { [ -n "${PIP_INDEX_URL:-}" ] || .venv/bin/pip config get global.index-url >/dev/null 2>&1; }
  if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null && { [ -n "${TORCH_INDEX:-}" ] || ! own_index; }; then
    # PyPI's Linux wheel is the CUDA build, with ~3 GB of NVIDIA libraries no CPU uses.
    say "2/4 installing PyTorch (the CPU build, ~200 MB: no NVIDIA GPU here)"
    .venv/bin/pip install --progress-bar on torch==2.13.0 --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  elif [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null; then
    say "2/4 installing PyTorch from your pip index (TORCH_INDEX=<PyTorch's CPU index or a mirror of it>: its CPU build)"
    .venv/bin/pip install --progress-bar on torch==2.13.0
  else
    say "2/4 installing PyTorch (PyPI's build: CUDA's on Linux, a few GB)"
    .venv/bin/pip install --progress-bar on torch==2.13.0
  fi
else
  say "2/4 PyTorch is installed already"
fi
stamp=.venv/.autoresearch-installed  # newer than pyproject.toml: what it needs is installed already
if [ -x .venv/bin/autoresearch ] && [ "$stamp" -nt pyproject.toml ]; then
  say "3/4 autoresearch is installed already"
else
  say "3/4 installing autoresearch and what it needs"
  .venv/bin/pip install --progress-bar on -e . && touch "$stamp"
fi
if [ ! -f demo/autoresearch.json ]; then
  say "4/4 preparing the data (your Python's own sources) and the workspace demo/"
  .venv/bin/autoresearch init demo --preset tiny --dataset python-source
else
  say "4/4 the workspace demo/ exists: going on where it stopped"
fi
cd demo
say "the research loop: 3 baseline runs, then ${EXPERIMENTS:-10} experiments (Ctrl-C stops; run this again to resume)"
../.venv/bin/autoresearch run --agent tune --max-experiments "${EXPERIMENTS:-10}"
