"""The driver's time per experiment, and what git and the ledger hold, at a ledger of N rows.

    PYTHONPATH=$PWD/src:$PWD/tests python3 bench/long_night.py --rows 5000 --steps 8 [--no-shell]

The real loop (ledger, git, the watches around each run and agent turn, the judge) with the tests' fake executor and
a scripted agent, on a workspace whose train.py is the H100 template (17.7 KB). N discarded experiments are first
written straight into the ledger and git (a loose blob, tree and commit each, and a ref under
refs/autoresearch/discarded), as N real ones leave them; then `--steps` experiments are timed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sysconfig
import time
import zlib
from pathlib import Path

from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, make_workspace, with_constants

from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.loop import guard
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Kind, Status

TEMPLATE = Path(__file__).parents[1] / "src/autoresearch/workspace/templates/train.py"


def loose(git_dir: Path, kind: str, body: bytes) -> str:
    data = f"{kind} {len(body)}\0".encode() + body
    oid = hashlib.sha1(data).hexdigest()
    path = git_dir / "objects" / oid[:2] / oid[2:]
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_bytes(zlib.compress(data))
    return oid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/long_night"))
    parser.add_argument("--no-shell", action="store_true", help="the agent runs no program, as tune: not watched")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parser.add_argument("--corpus", type=Path, default=stdlib / "asyncio", help="the python-source corpus's root")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    data = prepare("python-source", get_preset("tiny"), args.work / "cache", root=args.corpus)
    template = TEMPLATE.read_text()
    ws = make_workspace(args.work / "ws", data, template)
    rng = random.Random(0)
    loop = make_loop(ws, FakeExecutor(lambda src: 3.0 + abs(constant(src, "MATRIX_LR") - 0.05) + rng.gauss(0, 1e-3)))
    base = loop.baseline()
    ledger, git_dir = Ledger(ws.root), ws.git.git_dir
    (git_dir / "refs/autoresearch/discarded").mkdir(parents=True, exist_ok=True)
    for i in range(ledger.next_id(), ledger.next_id() + args.rows):
        lr = round(rng.uniform(0.01, 0.1), 6)
        src = with_constants(template, MATRIX_LR=lr, SEED=42 + i)
        tree = loose(git_dir, "tree", b"100644 train.py\0" + bytes.fromhex(loose(git_dir, "blob", src.encode())))
        head = f"tree {tree}\nparent {base.commit}\nauthor a <a@b> 1 +0000\ncommitter a <a@b> 1 +0000\n\n"
        commit = loose(git_dir, "commit", f"{head}exp {i}: MATRIX_LR {lr}\n".encode())
        (git_dir / f"refs/autoresearch/discarded/{i}").write_text(commit + "\n")
        added, removed = guard.diff_stats(base.source, src)
        ledger.insert(
            Experiment(
                id=i, kind=Kind.EXPERIMENT, status=Status.DISCARD, description=f"MATRIX_LR {lr}", parent=base.commit,
                commit=commit, agent="scripted", source=src, diff=guard.diff(base.source, src), lines_added=added,
                lines_removed=removed, val_bpb=3.1, runs="[3.1]", seeds="[0]", reason="not better", result=base.result,
                finished_at=time.time(),
            )
        )  # fmt: skip
    ledger.write_tsv()

    def edit(context):
        lr = round(rng.uniform(0.01, 0.1), 5)
        return f"MATRIX_LR {lr}", with_constants(context.train_py, MATRIX_LR=lr)

    agent = ScriptedAgent([edit] * args.steps)
    agent.shell = not args.no_shell
    loop.step(agent)  # the first after the rows were written (it packs what they left, where the loop packs)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps - 1):
        loop.step(agent)
    steps = args.steps - 1
    disk = sum(p.stat().st_blocks * 512 for p in git_dir.rglob("*") if p.is_file())
    print(json.dumps({
        "rows": args.rows, "wall_s_per_step": round((time.perf_counter() - wall) / steps, 3),
        "cpu_s_per_step": round((time.process_time() - cpu) / steps, 3), "git_bytes_on_disk": disk,
        "git_files": sum(1 for p in git_dir.rglob("*") if p.is_file()),
        "ledger_bytes": (ws.state / "ledger.sqlite").stat().st_size,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
