"""Can a confined run reach a GPU that is not its own? Checked with real CUDA on a machine of 2+ GPUs.

    PYTHONPATH=$PWD/src python3 bench/gpu_isolation.py [--out DIR]

For each GPU i, a confined process is started as a worker's run is (CUDA_VISIBLE_DEVICES=i, PCI bus order) and,
inside, starts Python again with CUDA_VISIBLE_DEVICES as given, unset, and set to every GPU, as an attacking
train.py would: each lists the GPUs it can allocate on, by UUID. The same probe unconfined shows what the
sandbox takes away. Writes gpu_isolation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from autoresearch.evaluator import sandbox
from autoresearch.evaluator.gpu_nodes import nvidia_gpus, own_nodes

LIST = """
import json, torch
found = []
for i in range(torch.cuda.device_count()):
    try:
        x = torch.ones(1024, 1024, device=f"cuda:{i}")
        (x @ x).sum().item()
        found.append(str(torch.cuda.get_device_properties(i).uuid))
    except Exception as exc:
        found.append(f"cuda:{i} failed: {type(exc).__name__}")
print(json.dumps(found))
"""

PROBE = f"""
import json, os, subprocess, sys
def look(visible):
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    run = subprocess.run([sys.executable, "-c", {LIST!r}], env=env, capture_output=True, text=True)
    return json.loads(run.stdout) if run.returncode == 0 else ["error: " + run.stderr.strip()[-300:]]
given = os.environ.get("CUDA_VISIBLE_DEVICES")
every = ",".join(str(i) for i in range({len(nvidia_gpus()) or 8}))
print(json.dumps({{"as given " + str(given): look(given), "unset": look(None), "every": look(every)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    args = parser.parse_args()
    truth = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True, text=True
    ).stdout
    report: dict = {"nvidia-smi": truth.strip().splitlines(), "driver": [g.__dict__ for g in nvidia_gpus()]}
    for gpu in range(len(nvidia_gpus())):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        with tempfile.TemporaryDirectory() as box:
            argv = sandbox.command([sys.executable, "-c", PROBE], workdir=Path(box), env=env)
            run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        nodes = own_nodes(env)
        report[f"confined on gpu {gpu}"] = {
            "own_only": nodes.own_only,
            "nodes": nodes.paths,
            "seen": json.loads(run.stdout) if run.returncode == 0 else run.stderr[-1000:],
        }
        unconfined = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
        report[f"unconfined on gpu {gpu}"] = json.loads(unconfined.stdout) if unconfined.returncode == 0 else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_isolation.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
