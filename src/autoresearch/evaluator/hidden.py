"""Where the text a model is scored on lies: what neither train.py's run nor a coding agent's turn may read.

The prepared data (the workspace's and every other dataset's, under the cache), the Ray nodes' copies of it, the
Hugging Face caches a hub dataset came from (its validation file among them, and hf_xet's chunks of it), and the raw
corpus a `local:PATH` or `python-source --root DIR` dataset was prepared from, which could be split as `prepare`
splits it. Not Python's own files (python-source's default corpus), which every process needs: README, "What is not
covered".

An agent that read the validation text could write it into train.py, and a model trained on it scores as no honest
one can; the causality probe cannot see that. So the agent's namespace covers these places too
(agents/namespace.py), where it can be made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from autoresearch.config.apparatus import CONFIG_NAME, Apparatus
from autoresearch.config.paths import cache_root, ray_dir
from autoresearch.data.shards import Manifest
from autoresearch.data.sources.hub import hub_caches
from autoresearch.evaluator.sandbox import python_needs
from autoresearch.files import holds


def data_places(data_dir: Path, manifest: Manifest | None, env: Mapping[str, str]) -> list[Path]:
    """The places that hold the data of `data_dir` (prepared with `manifest`), or any other dataset's, that exist."""
    folders = {data_dir.resolve(), cache_root() / "data", ray_dir(cache_root()), *hub_caches(env, data_dir)}
    places = {p for p in folders if p.is_dir()} | set(corpus_paths(manifest) if manifest else [])
    return sorted(places)


def corpus_paths(manifest: Manifest) -> list[Path]:
    """The raw text the data was prepared from (`local:PATH`, `python-source --root DIR`), where it is not where
    Python itself lives."""
    request = manifest.dataset.get("request") or manifest.dataset
    name = request.get("dataset")
    if isinstance(name, str) and name.startswith("local:"):
        paths = [name.removeprefix("local:")]
    else:
        paths = request.get("roots") or []
    return [Path(p) for p in paths if isinstance(p, str) and Path(p).exists() and not python_needs(Path(p))]


def workspace_data_places(workspace: Path) -> list[Path]:
    """`data_places` for the workspace's own dataset, as far as its autoresearch.json and manifest can be read (the
    prepared data of every dataset and the hub caches are named whatever they hold); never one that holds the
    workspace, which the agent works in."""
    data_dir, manifest = cache_root() / "data", None
    try:
        data_dir = Path(Apparatus.load(workspace / CONFIG_NAME).data_dir)
        manifest = Manifest.load(data_dir / "manifest.json")
    except Exception:  # no workspace config or manifest yet, or unreadable: the loop says so elsewhere
        pass
    inside = workspace.resolve()
    return [p for p in data_places(data_dir, manifest, os.environ) if not holds(p, inside)]
