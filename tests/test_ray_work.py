"""A Ray worker's folder on its node (loop/ray_work.py): kept while its worker lives, deleted once it is gone."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_a_sweep_over_what_else_lies_there_never_raises_nor_reaches_outside(tmp_path):
    """BROKE, fixed (red team): a file `...lock` named the folder `..`, and the sweep emptied every node's folder of
    works, live workers' included; `.lock`, a lock that is a folder, and a name too long to have a lock raised, failing
    every run of the node. A link is removed, never followed; a FIFO or a device is never opened."""
    top = tmp_path / "cache" / "ray" / "work"
    works, live = top / "node", top / "another-node" / "7-0-0123abcd"
    (live / "runs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    works.mkdir()
    for name in ("...lock", ".lock", "..lock"):
        (works / name).write_text("")
    (works / "7-0-00000001.lock").mkdir()  # a lock that is a folder
    (works / "7-0-00000001").mkdir()
    (works / ("a" * 255)).mkdir()  # no lock can be named after it
    (works / "7-0-00000002.lock").symlink_to(outside / "keep")  # its lock a link to a file outside
    (works / "7-0-00000002").symlink_to(outside)  # its folder a link to a folder outside
    os.link(outside / "keep", works / "7-0-00000003.lock")  # a hard link: a regular file, free, so unlinked
    os.mkfifo(works / "7-0-00000004.lock")
    (works / "7-0-00000004").mkdir()
    os.mknod(works / "7-0-00000005.lock", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's device
    ray_work.sweep(works)
    assert (outside / "keep").read_text() == "keep" and sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (live / "runs").is_dir()
    # What could not be told for a lock (a folder, a FIFO, a device, never opened) stays, with its folder.
    assert sorted(p.name for p in works.iterdir()) == sorted(
        ["7-0-00000001.lock", "7-0-00000001", "7-0-00000004.lock", "7-0-00000004", "7-0-00000005.lock"]
    )


# Two workers that draw one name: the same pid, GPU and random part (a chance of 2^-32 a worker, forced here).
SAME_NAME = """
import os, secrets, sys
from pathlib import Path
from autoresearch.loop import ray_work
os.getpid = lambda: 7
drawn = iter(["deadbeef", "0badcafe"])
secrets.token_hex = lambda _n: next(drawn)
print(ray_work.claim(Path(sys.argv[1]), "0"), flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_a_worker_that_draws_a_name_another_holds_takes_another_at_once(tmp_path):
    """BROKE, fixed (red team): it waited on the other's lock, for that worker's life, then took its folder."""
    works = tmp_path / "work" / "node"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", SAME_NAME, str(works)]
    first = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    second = None
    try:
        assert first.stdout.readline().strip().endswith("7-0-deadbeef")
        second = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert second.stdout.readline().strip().endswith("7-0-0badcafe")  # no wait for the first to end
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.kill()
                worker.wait()


# A worker that fetches the data for its node, killed after the first piece came.
FETCH = """
import os, signal, sys
from pathlib import Path
from autoresearch.data.shards import Manifest
from autoresearch.loop import ray_data, ray_work
prepared, cache = Path(sys.argv[1]), Path(sys.argv[2])
text = (prepared / "manifest.json").read_text()
store = []
parcel = ray_data.ship_data(prepared, Manifest.parse(text, "test"), lambda piece: store.append(piece) or len(store) - 1)
fetched = []

def get(ref):
    if fetched:
        os.kill(os.getpid(), signal.SIGKILL)
    fetched.append(ref)
    return store[ref]

work = ray_work.claim(cache / "work" / "node", "0")
ray_data.node_copy(text, parcel, cache / "data", get, work)
"""


def test_a_worker_killed_while_it_fetches_the_data_leaves_nothing_once_the_node_runs_again(tmp_path, tiny_prepared):
    """Its part of a copy was in a folder beside the copies of the data, `<cache>/ray/data/.<digest>-...`, which
    nothing deleted: on a night's first minutes, up to the whole data set for each Ctrl-C."""
    cache = tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", FETCH, str(tiny_prepared), str(cache)], env=env, check=False)
    assert done.returncode == -signal.SIGKILL
    assert [p for p in (cache / "work" / "node").rglob("*") if p.is_file() and p.stat().st_size]  # a part came
    ray_work.sweep(cache / "work" / "node")
    assert not list((cache / "work" / "node").iterdir()) and not list((cache / "data").iterdir())


def test_a_gone_workers_folder_nested_past_the_recursion_limit_or_read_only_goes_and_the_sweep_never_raises(tmp_path):
    """BROKE, fixed (review): a train.py that nested 1,500 folders in its box, its worker then killed, had every later
    sweep of the node raise RecursionError (shutil.rmtree recursed), failing each run of the node."""
    works = tmp_path / "work" / "node"
    deep = works / "7-0-0123abcd" / ".autoresearch" / "box-1"
    deep.mkdir(parents=True)
    folder = os.open(deep, os.O_RDONLY)
    for _ in range(1500):  # by descriptors: no path names the bottom
        os.mkdir("d", dir_fd=folder)
        below = os.open("d", os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = below
    os.close(folder)
    locked = works / "7-0-0badcafe" / "runs"
    locked.mkdir(parents=True)
    (locked / "result.json").write_text("{}")
    locked.chmod(0o500)
    ray_work.sweep(works)
    assert not list(works.iterdir())
