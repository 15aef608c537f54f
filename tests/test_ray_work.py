"""A Ray worker's folder on its node (loop/ray_work.py): kept while its worker lives, deleted once it is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from autoresearch.loop import ray_work

# A worker in a container: its pid is its namespace's (here made the same in two), and it claims its folder.
WORKER = """
import os, sys, time
from pathlib import Path
from autoresearch.loop import ray_work
os.getpid = lambda: 7
print(ray_work.claim(Path(sys.argv[1]), sys.argv[2]), flush=True)
time.sleep(600)
"""


def test_a_nodes_folders_are_deleted_once_their_workers_are_gone_by_their_lock_not_their_pid(tmp_path):
    """By pid, containers that share a hostname (host networking) and a cache root each saw the others' workers as
    gone and deleted their folders mid-run, and two workers of one pid and GPU number shared one folder."""
    works = tmp_path / "work" / "node"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    gpus = ("0", "0", "MIG-GPU-5d1c/1/0", "1")  # the third a MIG id of the older form, with slashes
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(works), gpu], stdout=subprocess.PIPE, text=True, env=env)
        for gpu in gpus
    ]
    try:
        folders = [Path(w.stdout.readline().strip()) for w in workers]
        assert len(set(folders)) == 4 and all(f.parent == works and f.is_dir() for f in folders)
        assert folders[0].name.startswith("7-0-") and folders[2].name.startswith("7-MIG-GPU-5d1c_1_0-")
        for folder in folders:
            (folder / "runs" / "1-0").mkdir(parents=True)
        workers[3].send_signal(signal.SIGKILL)  # gone with a run in flight
        workers[3].wait()
        legacy = [works / "2147483648-0", works / "99999999999999999999-0"]  # an older autoresearch's, no lock
        for folder in legacy:
            (folder / "runs").mkdir(parents=True)
        ray_work.sweep(works)
        assert sorted(works.iterdir()) == sorted([*folders[:3], *(ray_work._lock_of(f) for f in folders[:3])])
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    ray_work.sweep(works)  # all gone now
    assert not list(works.iterdir())
