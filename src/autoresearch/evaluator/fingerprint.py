"""The apparatus fingerprint: what decides a score, hashed.

It covers the trusted side's code (this package, the wire protocol, device.py and anchor.py: serving data, the
clock, loading the handed-over model, bits per byte, the probe, the device's precision and name, the run's init), the
prepared data (through its manifest, which covers the tokenizer and the preset) and the budget. Changing a hint string
elsewhere in the package leaves it alone; changing how a score is computed does not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from autoresearch import wire
from autoresearch.config.apparatus import Apparatus
from autoresearch.data.shards import Manifest
from autoresearch.files import sources_sha256


def code_digest() -> str:
    """SHA-256 over the evaluator's source files, the wire protocol, the device's (its precision, and the name a
    result's setup gives it) and the anchor's (the init of a run's sandbox)."""
    here = Path(__file__).parent
    beside = [Path(wire.__file__), here.parent / "device.py", here.parent / "anchor.py"]
    return sources_sha256([*sorted(here.rglob("*.py")), *beside], here.parent)


def fingerprint(apparatus: Apparatus, manifest: Manifest) -> str:
    """Identifies the apparatus: changes with the evaluator's code, the data, the tokenizer, the preset (what the
    evaluator scores with: its rows, its batch) or the budget."""
    key = f"{code_digest()}:{manifest.digest()}:{apparatus.preset}:{apparatus.budget_seconds}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]
