#!/usr/bin/env bash
# The GPU measurements of issues 8, 10 and 11, as device calls on a machine of two H200s (nvidia-h200-x2):
#   bash bench/h200_session.sh setup isolation      # a confined run sees its own GPU only
#   bash bench/h200_session.sh setup parallel ray   # both GPUs, the scheduler, then Ray
#   bash bench/h200_session.sh setup overhead_paired  # the one-GPU loop's cost; paired seeds
#   bash bench/h200_session.sh setup single         # the one-GPU loop with tune on GPU 0; a change's seeds on GPU 1
#   bash bench/h200_session.sh setup nudge          # one GPU against two, the same scripted changes, warm cache
#   bash bench/h200_session.sh setup overhead ray_nudge  # the one-GPU loop's cost alone; Ray with nudge after it
#   bash bench/h200_session.sh setup paired60       # paired seeds at 60 s: the baseline and a change, per GPU
#   bash bench/h200_session.sh setup verify         # 3 minutes: the loop's cost on GPU 0, one worker on GPU 1
#   bash bench/h200_session.sh setup nvml           # 2 minutes: no NVML warning in a confined run's log
#   bash bench/h200_session.sh setup same_gpu       # the one-worker loop, then --gpus 0, one after the other on GPU 0
#   ORDER="old new" bash bench/h200_session.sh setup before_after  # issue 8: the loop before the hand-over, then now
#   bash bench/h200_session.sh tools cpu_noise    # issue 9: the tiny preset's noise on 2 pinned CPU cores, no GPU
#   CONFIGS="a= b=WARMUP_RATIO=0.05" bash bench/h200_session.sh tools noise_configs  # the same, several settings at once
#   bash bench/h200_session.sh tools same_setup   # 3 minutes: each run's setup on a GPU, as the loop compares them
#   bash bench/h200_session.sh setup disk         # bytes the compile caches and the state gain per experiment
#   bash bench/h200_session.sh tools cpu_fork     # 9 minutes: forked CPU runs and torch's thread pool (torch 2.11)
#   bash bench/h200_session.sh setup copies       # how closely the runs of a train.py that ignores SEED repeat one
#                                                 # another, against honest seeds (GPU and CPU)
#   bash bench/h200_session.sh setup neighbour    # 7 minutes: runs alone, beside a neighbour that takes every core
#                                                 # and the memory bus (bench/neighbour_hog.py), and both pinned apart
#   bash bench/h200_session.sh setup neighbour_pinned  # 5 minutes: the run pinned by the loop (AUTORESEARCH_RUN_CPUS,
#                                                 # sched_setaffinity refused inside), the neighbour on the other cores
#   bash bench/h200_session.sh setup agent_cores  # 7 minutes: a run on every CPU; on the loop's split with a shell
#                                                 # agent, beside a neighbour on the agents' core; on 4 and 2 CPUs
#   bash bench/h200_session.sh setup tasks        # 6 minutes: the most tasks a real run has and the most memory its
#                                                 # evaluator's group holds (bench/task_peak.py), and a run under a
#                                                 # cap of 512 tasks (AUTORESEARCH_TASKS) and 16 GiB of memory
#   bash bench/h200_session.sh setup cold_user    # 8 minutes: cold first steps of runs as root and as nobody, twice
#   bash bench/h200_session.sh tools caps         # 7 minutes: the caps a loop run as root gives its runs here, and
#                                                 # their tests (pytest and its needs carried as wheels in .whl)
#   bash bench/h200_session.sh tools filter       # 3 minutes: the red team's tests of the system-call filter, the
#                                                 # runs' host users and what the kernel counts per user, here
# Each phase's time limit keeps the call inside the device's 10 minutes; collect_runs.py keeps what ran.
# Carried: .bw (bubblewrap, libseccomp: `apt-get download bubblewrap libseccomp2`), .old (before_after only),
# .whl (optuna and its needs as wheels; ray.tar.xz, Ray 2.60 without its Java, RLlib, Serve, Tune, Train, Data
# and LLM parts: its wheel is over the call's 64 MiB). Results go to $OUT.
set -u
OUT=${OUT:-/tmp/out}
here=$PWD
log() { echo "== $(date +%T) $*"; }

tools() {  # bubblewrap and the carried wheels, on the paths; no data prepared
  for f in .bw/*.deb; do dpkg -x "$f" /tmp/bw; done
  mkdir -p /tmp/site
  ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl
  [ -f .whl/ray.tar.xz ] && tar -xJf .whl/ray.tar.xz -C /tmp/site
  export PATH=/tmp/bw/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/bw/usr/lib/x86_64-linux-gnu
  export PYTHONPATH=$here/src:$here/bench:$here/.bw/py:/tmp/site AUTORESEARCH_CACHE=/tmp/arcache PYTHONUNBUFFERED=1
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  nvidia-smi -L
}

prepare_data() {  # python-source for preset $1, from this machine's Python sources, within $2 seconds
  timeout "${2:-540}" python3 -c "
from autoresearch.config.paths import cache_root
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
print(prepare('python-source', get_preset('$1'), cache_root()))"
}

setup() {
  tools
  prepare_data h100
}

noise_configs() {  # issue 9: the tiny preset's seed noise for several train.py settings at once, two cores each
  # CONFIGS="name=NAME=VALUE,NAME=VALUE ..." (nothing after the first = : as shipped); one config per core pair from 2
  nproc; lscpu | grep -E "Model name|Hypervisor" || true
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu prepare_data tiny 120  # on every core, before the pinned runs
  local core=2 pids=() config name sets args kv s
  for config in ${CONFIGS:-shipped=}; do
    name=${config%%=*} sets=${config#*=} args=()
    IFS=, read -ra kv <<< "$sets"
    for s in "${kv[@]}"; do [ -n "$s" ] && args+=(--set "$s"); done
    mkdir -p "$OUT/$name"
    env CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu taskset -c "$core,$((core + 1))" timeout "${NOISE_S:-460}" \
      python3 bench/seed_noise.py --preset tiny --seeds "${SEEDS:-5}" --work "/tmp/sn-$name" --out "$OUT/$name" \
      "${args[@]}" >"$OUT/$name/log.txt" 2>&1 &
    pids+=($!) core=$((core + 2))
  done
  wait "${pids[@]}"
  for config in ${CONFIGS:-shipped=}; do  # every run that ended, also of a config cut by NOISE_S
    python3 bench/collect_runs.py "$OUT/${config%%=*}/runs.json" "/tmp/sn-${config%%=*}" >/dev/null 2>&1
  done
  python3 -c "
import json, pathlib, statistics
for f in sorted(pathlib.Path('$OUT').glob('*/seed_noise_tiny.json')):
    d = json.loads(f.read_text())
    print(f.parent.name, d['overrides'], [(round(r['val_bpb'], 4), r['steps']) for r in d['runs']], round(d['noise'], 4))"
}

cpu_noise() {  # issue 9: the tiny preset's seed noise on two pinned cores of this otherwise idle host (after `tools`)
  nproc; lscpu | grep -E "Model name|Hypervisor|Thread\(s\) per core" || true
  local pin="taskset -c 2,3" cpu="env CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu"
  $cpu OMP_WAIT_POLICY=PASSIVE $pin timeout 80 python3 bench/cpu_clock_jitter.py --threads 2 --windows 5 --seconds 10 \
    2>&1 | tee "$OUT/cpu_clock_jitter.txt"
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu prepare_data tiny 120  # on every core, before the pinned runs
  $cpu $pin timeout 420 python3 bench/seed_noise.py --preset tiny --seeds 5 --work /tmp/sn --out "$OUT" \
    >"$OUT/seed_noise.log" 2>&1
  tail -12 "$OUT/seed_noise.log"
}

cpu_fork() {  # torch's thread pool after a fork (bench/fork_thread_pool.py), then tiny runs on the CPU through
  # the fork server on every core, unpinned, where with torch 2.11 each run died at its first step until the
  # experiment set its thread count after the fork. With .old (`git archive REV src | tar -x -C .old`, carried) one
  # run of that loop first, then two of this one (a run takes ~150 s there).
  for fresh in "" --fresh; do
    timeout 120 python3 bench/fork_thread_pool.py --forks 200 --first op --threads 16 $fresh 2>&1 | tail -1
  done | tee "$OUT/fork_thread_pool.txt"
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu prepare_data tiny 120
  if [ -d .old/src ]; then
    CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu PYTHONPATH=$here/.old/src:${PYTHONPATH#*:} timeout 110 \
      python3 bench/seed_noise.py --preset tiny --seeds 1 --work /tmp/cfo --out "$OUT" >"$OUT/cpu_fork_old.log" 2>&1
    grep -rh -m4 -i "invalid thread pool\|terminate\|num_steps\|invalid_reason" /tmp/cfo/.autoresearch/runs \
      | sed 's/^/old: /'
  fi
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu timeout "${FORK_S:-400}" python3 bench/seed_noise.py --preset tiny \
    --seeds 2 --work /tmp/cf --out "$OUT" >"$OUT/cpu_fork.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_cpu_fork.json" /tmp/cf
  grep -rh -i "invalid thread pool\|terminate\|num_steps\|val_bpb:\|invalid_reason" /tmp/cf/.autoresearch/runs \
    | sed 's/^/new: /'
  tail -5 "$OUT/cpu_fork.log"
}

copies() {  # 3 seeds of the h100 baseline at 60 s, then 3 of the same with torch seeded by a fixed 42, on GPU 0;
  # meanwhile the same for the tiny preset on two pinned CPU cores each (loop/judge.py's COPY_SPREAD)
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu prepare_data tiny 120
  local sn="python3 bench/seed_noise.py --seeds 3" cpu="env CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu"
  (CUDA_VISIBLE_DEVICES=0 timeout 240 $sn --preset h100 --budget 60 --work /tmp/cg --out "$OUT/gpu_seeds" \
     >"$OUT/gpu_seeds.log" 2>&1
   CUDA_VISIBLE_DEVICES=0 timeout 240 $sn --preset h100 --budget 60 --fixed-seed 42 --work /tmp/cgc \
     --out "$OUT/gpu_copies" >"$OUT/gpu_copies.log" 2>&1) &
  $cpu taskset -c 8,9 timeout 330 $sn --preset tiny --work /tmp/cc --out "$OUT/cpu_seeds" >"$OUT/cpu_seeds.log" 2>&1 &
  $cpu taskset -c 10,11 timeout 330 $sn --preset tiny --fixed-seed 42 --work /tmp/ccc --out "$OUT/cpu_copies" \
    >"$OUT/cpu_copies.log" 2>&1 &
  wait
  python3 bench/collect_runs.py "$OUT/runs_copies.json" /tmp/cg /tmp/cgc /tmp/cc /tmp/ccc
  python3 -c "
import json, pathlib
for f in sorted(pathlib.Path('$OUT').glob('*/seed_noise_*.json')):
    d = json.loads(f.read_text())
    print(f.parent.name, [(round(r['val_bpb'], 5), r['steps']) for r in d['runs']], 'std', round(d['noise'], 5))"
}

neighbour_warm() {  # the shipped train.py once, compiling from nothing (51 s of a first step on one machine: 120 s
  # was too short there), so that the runs after it start from the compile cache
  CUDA_VISIBLE_DEVICES=0 timeout 170 python3 bench/seed_noise.py --preset h100 --budget 30 --seeds 1 --work /tmp/nw \
    --out /tmp/nw-out >"$OUT/warm.log" 2>&1
}

seed_runs() {  # each seed_noise result under $OUT: its folder's name, and (val_bpb, steps) per run
  python3 -c "
import json, pathlib
for f in sorted(pathlib.Path('$OUT').glob('*/seed_noise_*.json')):
    d = json.loads(f.read_text())
    print(f.parent.name, [(round(r['val_bpb'], 5), r['steps']) for r in d['runs']])"
}

neighbour() {  # what a train.py on another worker costs a run by taking the CPU: the shipped train.py at 30 s,
  # 2 seeds each alone, beside bench/neighbour_hog.py, and with the run on cores 0-7 and the neighbour on 8-15
  nproc; echo "autogroup: $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo none)"
  local sn="python3 bench/seed_noise.py --preset h100 --budget 30 --seeds 2" hog=bench/neighbour_hog.py
  neighbour_warm
  CUDA_VISIBLE_DEVICES=0 timeout 130 $sn --work /tmp/na --out "$OUT/alone" >"$OUT/alone.log" 2>&1
  python3 $hog --seconds 140 & local pid=$!
  CUDA_VISIBLE_DEVICES=0 timeout 130 $sn --work /tmp/nh --out "$OUT/beside" >"$OUT/beside.log" 2>&1
  kill $pid; wait $pid
  taskset -c 8-15 python3 $hog --busy 8 --stream 8 --seconds 140 & pid=$!
  CUDA_VISIBLE_DEVICES=0 taskset -c 0-7 timeout 130 $sn --work /tmp/np --out "$OUT/pinned" >"$OUT/pinned.log" 2>&1
  kill $pid; wait $pid
  python3 bench/collect_runs.py "$OUT/runs_neighbour.json" /tmp/na /tmp/nh /tmp/np >/dev/null
  seed_runs
}

neighbour_pinned() {  # the run pinned as the loop pins a worker's runs (its evaluator reads AUTORESEARCH_RUN_CPUS;
  # the experiment under the filter that refuses sched_setaffinity), the neighbour on the other cores as a second
  # worker's would be
  local sn="python3 bench/seed_noise.py --preset h100 --budget 30 --seeds 2" hog=bench/neighbour_hog.py
  neighbour_warm
  taskset -c 8-15 python3 $hog --busy 16 --stream 8 --seconds 150 & local pid=$!
  AUTORESEARCH_RUN_CPUS=0,1,2,3,4,5,6,7 CUDA_VISIBLE_DEVICES=0 timeout 140 $sn --work /tmp/nl --out "$OUT/loop_pinned" \
    >"$OUT/loop_pinned.log" 2>&1
  kill $pid; wait $pid
  python3 bench/collect_runs.py "$OUT/runs_neighbour_pinned.json" /tmp/nl >/dev/null
  grep -h "^device:\|^num_steps:\|^val_bpb:" /tmp/nl/.autoresearch/runs/*/log.txt
  seed_runs
}

agent_cores() {  # a shell agent's turns get a core of their own (evaluator/cores.py): what the run keeps on the rest,
  # beside a neighbour that keeps the agents' core busy, against a run on every CPU; and runs on 4 and 2 CPUs only
  lscpu | grep -E "^(CPU\(s\)|Thread|Core|Socket)"
  local split sn="python3 bench/seed_noise.py --preset h100 --budget 30" hog=bench/neighbour_hog.py
  split=$(python3 -c "
from autoresearch.evaluator.cores import AGENT_CPUS_ENV, RUN_CPUS_ENV, agent_cores, pins
runs, theirs = pins(1, agent_cores(1, True))
print(runs[0].get(RUN_CPUS_ENV, ''), theirs.get(AGENT_CPUS_ENV, ''))")
  echo "runs, agents: $split"
  set -- $split
  neighbour_warm
  CUDA_VISIBLE_DEVICES=0 timeout 75 $sn --seeds 1 --work /tmp/ca --out "$OUT/all_cpus" >"$OUT/all_cpus.log" 2>&1
  taskset -c "$2" python3 $hog --busy 4 --stream 4 --seconds 150 & local pid=$!
  AUTORESEARCH_RUN_CPUS=$1 CUDA_VISIBLE_DEVICES=0 timeout 140 $sn --seeds 2 --work /tmp/cs --out "$OUT/split" \
    >"$OUT/split.log" 2>&1
  kill $pid; wait $pid
  for cpus in 0-3 0-1; do
    AUTORESEARCH_RUN_CPUS=$cpus CUDA_VISIBLE_DEVICES=0 timeout 75 $sn --seeds 1 --work /tmp/c$cpus \
      --out "$OUT/cpus_$cpus" >"$OUT/cpus_$cpus.log" 2>&1
  done
  python3 bench/collect_runs.py "$OUT/runs_agent_cores.json" /tmp/ca /tmp/cs /tmp/c0-3 /tmp/c0-1 >/dev/null
  seed_runs
}

tasks() {  # a run's cap on tasks (evaluator/tasks.py): how many a real run has at its peak (the whole machine's count
  # beside it: evaluator, experiment, compiler workers), and whether a run under a cap of 512 trains as one without
  id -u; uname -r; grep -E "cgroup|pids" /proc/self/cgroup | head -3
  local sn="python3 bench/seed_noise.py --preset h100 --budget 30 --seeds 1"
  neighbour_warm
  python3 bench/task_peak.py --seconds 90 > "$OUT/task_peak.txt" & local pid=$!
  CUDA_VISIBLE_DEVICES=0 timeout 85 $sn --work /tmp/tp --out "$OUT/uncapped" >"$OUT/uncapped.log" 2>&1
  kill -TERM $pid; wait $pid; cat "$OUT/task_peak.txt"
  AUTORESEARCH_TASKS=512 AUTORESEARCH_RUN_MEMORY=16G CUDA_VISIBLE_DEVICES=0 timeout 85 $sn --work /tmp/t512 --out "$OUT/capped" \
    >"$OUT/capped.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_tasks.json" /tmp/tp /tmp/t512 >/dev/null
  grep -h "refused a new process\|for its memory\|^val_bpb:\|^num_steps:" /tmp/tp/.autoresearch/runs/*/log.txt \
    /tmp/t512/.autoresearch/runs/*/log.txt
  seed_runs
}

isolation() {  # a confined run reaches its own GPU only, whatever it sets CUDA_VISIBLE_DEVICES to
  timeout 120 python3 bench/gpu_isolation.py --out "$OUT"
}

overhead_paired() {  # issue 8's loop on GPU 0, then a change's seeds there; the baseline's seeds on GPU 1
  (CUDA_VISIBLE_DEVICES=0 timeout 260 python3 bench/loop_overhead.py --preset h100 --budget 30 --experiments 2 \
     --baseline-runs 2 --work /tmp/lo --out "$OUT" >"$OUT/loop_overhead.log" 2>&1
   CUDA_VISIBLE_DEVICES=0 timeout 170 python3 bench/seed_noise.py --preset h100 --budget 30 --seeds 3 \
     --set MATRIX_LR=0.05 --work /tmp/sn1 --out /tmp/sn1-out >>"$OUT/paired.log" 2>&1) &
  CUDA_VISIBLE_DEVICES=1 timeout 340 python3 bench/seed_noise.py --preset h100 --budget 30 --seeds 5 \
    --work /tmp/sn0 --out /tmp/sn0-out >>"$OUT/paired.log" 2>&1 &
  wait
  python3 bench/collect_runs.py "$OUT/runs_overhead_paired.json" /tmp/lo /tmp/sn0 /tmp/sn1
}

overhead() {  # issue 8's loop on GPU 0 with nothing else on the machine (its first seed fills the compile cache);
  # OVERHEAD_S and OVERHEAD_EXPERIMENTS shorten it to fit a call's remaining time
  CUDA_VISIBLE_DEVICES=0 timeout "${OVERHEAD_S:-420}" python3 bench/loop_overhead.py --preset h100 --budget 30 \
    --experiments "${OVERHEAD_EXPERIMENTS:-3}" --baseline-runs 2 --work /tmp/lo --out "$OUT" >"$OUT/loop_overhead.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_overhead.json" /tmp/lo
}

disk() {  # what a night leaves on a GPU machine: the compile caches and the state after each experiment, each a
  # model of another width (a new graph to compile); the lines `disk {...}` of disk.log
  CUDA_VISIBLE_DEVICES=0 timeout "${DISK_S:-420}" python3 bench/loop_overhead.py --preset h100 --budget 10 --shapes \
    --experiments "${DISK_EXPERIMENTS:-3}" --baseline-runs 2 --work /tmp/dk --out "$OUT" >"$OUT/disk.log" 2>&1
  grep "^disk" "$OUT/disk.log"
  du -sb /tmp/arcache/evaluator-compile/* /tmp/arcache/compile/* 2>/dev/null
}

nvml() {  # 2 minutes: a confined run's log on the GPU starts with no NVML warning (the tiny preset, compiled)
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/loop_overhead.py --preset tiny --budget 5 --experiments 1 \
    --baseline-runs 2 --work /tmp/nv --out "$OUT" >"$OUT/nvml.log" 2>&1
  head -3 /tmp/nv/.autoresearch/runs/*/log.txt
  grep -c "NVML" /tmp/nv/.autoresearch/runs/*/log.txt
}

same_setup() {  # 3 minutes: every run on GPU 0 records the baseline's setup, so the loop judges them (after `tools`)
  prepare_data tiny 120
  CUDA_VISIBLE_DEVICES=0 timeout 200 python3 bench/loop_overhead.py --preset tiny --budget 5 --experiments 2 \
    --baseline-runs 2 --work /tmp/ss --out "$OUT" >"$OUT/same_setup.log" 2>&1
  tail -3 "$OUT/same_setup.log"
  python3 -c "
import glob, json
from autoresearch.evaluator.gpu_nodes import gpu_model
for path in sorted(glob.glob('/tmp/ss/.autoresearch/runs/*/result.json')):
    print(path.split('/')[-2], json.load(open(path)).get('setup'))
print('the driver table names GPU 0:', gpu_model('0'))" | tee "$OUT/same_setup.txt"
}

paired60() {  # seeds 0-2 of the baseline, then of MATRIX_LR=0.05, on each GPU: 6 pairs, each on one GPU
  for g in 0 1; do
    (CUDA_VISIBLE_DEVICES=$g timeout 290 python3 bench/seed_noise.py --preset h100 --budget 60 --seeds 3 \
       --work /tmp/p60b$g --out /tmp/p60b$g-out >"$OUT/paired60_gpu$g.log" 2>&1
     CUDA_VISIBLE_DEVICES=$g timeout 240 python3 bench/seed_noise.py --preset h100 --budget 60 --seeds 3 \
       --set MATRIX_LR=0.05 --work /tmp/p60c$g --out /tmp/p60c$g-out >>"$OUT/paired60_gpu$g.log" 2>&1) &
  done
  wait
  python3 bench/collect_runs.py "$OUT/runs_paired60.json" /tmp/p60b0 /tmp/p60c0 /tmp/p60b1 /tmp/p60c1
}

verify() {  # a short one: issue 8's loop on GPU 0; the one-worker scheduler on GPU 1 (its number inside is 0)
  CUDA_VISIBLE_DEVICES=0 timeout 185 python3 bench/loop_overhead.py --preset h100 --budget 30 --experiments 2 \
    --baseline-runs 2 --work /tmp/lo --out "$OUT" >"$OUT/loop_overhead.log" 2>&1 &
  timeout 185 python3 bench/parallel_gpus.py --preset h100 --budget 30 --gpus 1 --agent nudge --minutes 1.5 \
    --experiments 40 --work /tmp/pg1 --out "$OUT" --name _gpu1 >"$OUT/parallel_1w.log" 2>&1 &
  wait
  python3 bench/collect_runs.py "$OUT/runs_verify.json" /tmp/lo /tmp/pg1
}

same_gpu() {  # issue 10: `--gpus` with one GPU against the one-worker loop, on one machine and GPU, not at once
  CUDA_VISIBLE_DEVICES=0 timeout 300 python3 bench/loop_overhead.py --preset h100 --budget 30 --experiments 2 \
    --baseline-runs 2 --work /tmp/lo --out "$OUT" >"$OUT/loop_overhead.log" 2>&1
  timeout 220 python3 bench/parallel_gpus.py --preset h100 --budget 30 --gpus 0 --agent nudge --minutes 2 \
    --experiments 40 --work /tmp/pg1 --out "$OUT" --name _same_gpu >"$OUT/parallel_1w.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_same_gpu.json" /tmp/lo /tmp/pg1
  cp /tmp/lo/.autoresearch/runs/3-0/log.txt "$OUT/log_same_gpu_3-0.txt"
}

caps() {  # 7 minutes, no data prepared: what a loop run as root is given for its runs here (cgroup v2: groups beside
  # the loop's own cgroup), and the tests of the caps (a run forking without end, one spreading its memory) on the CPU
  python3 -c "import os; from autoresearch.evaluator import sandbox as s
print('every run is given:', sorted(s.can_promise(os.environ)), '| tasks capped:', s.runs_capped(4096))"
  local own; own=$(sed -n 's/^0:://p' /proc/self/cgroup)
  echo "own cgroup $own: controllers '$(cat /sys/fs/cgroup$own/cgroup.controllers 2>&1)'," \
    "its parent hands down '$(cat "/sys/fs/cgroup$(dirname "$own")/cgroup.subtree_control" 2>&1)'"
  for f in memory.max memory.high memory.swap.max memory.swap.high memory.zswap.max pids.max cpu.max cpuset.cpus \
    cpuset.mems io.max rdma.max misc.max hugetlb.2MB.max hugetlb.1GB.max; do  # its own limits: none, or no group beside
    echo "  $f: $(cat "/sys/fs/cgroup$own/$f" 2>&1 | tr '\n' ' ')"
  done
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu timeout 300 python3 -m pytest -q -p no:cacheprovider \
    tests/test_tasks.py tests/test_memory.py tests/test_red_team.py tests/test_red_team_downgrade.py \
    tests/test_run_user.py -k "cap or group or memory or forks or honest or user" --tb=short 2>&1 | tail -60
  python3 -c "import os; from autoresearch.agents import turn_cgroups as t
for g in t.turn_groups(''): print('a turn lies in', g, {f: open(g / f).read().split() for f in ('pids.max', 'memory.max',
  'cgroup.subtree_control') if (g / f).exists()})"  # a root loop's shell-agent turns: their caps here
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu timeout 200 python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_red_team_agent.py tests/test_agent_turn.py -k "holds_more_than_its_memory or forks_without_end or \
    loop_run_as_root or dies_with_its_loop or killed_during_the_agents_turn" 2>&1 | tail -15
  find /sys/fs/cgroup -name 'autoresearch-*' 2>/dev/null | head  # nothing of the tests' left
}

filter() {  # the red team's tests of what the filter refuses a run (set-ID modes, inotify, openat2), who owns a
  # run's files and namespace, and what the kernel counts per user, on this machine's kernel, as a root loop
  CUDA_VISIBLE_DEVICES= AUTORESEARCH_DEVICE=cpu timeout 280 python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_red_team_fork.py tests/test_red_team_run_owner.py tests/test_red_team_per_user.py --tb=short 2>&1 | tail -30
}

smoke() {  # same_gpu within one call of 10 minutes, setup included (one GPU; its logs' heads for a look)
  python3 -c "import os; from autoresearch.evaluator import sandbox as s
print('every run is given:', sorted(s.can_promise(os.environ)), '| anchor:', s.anchors_reason() or 'made and joined',
      '| own user namespace:', s.own_user_namespace(), '| tasks capped:', s.runs_capped(4096))"
  timeout 60 python3 bench/agent_network.py || echo "agent network check failed: $?"
  CUDA_VISIBLE_DEVICES=0 timeout 230 python3 bench/loop_overhead.py --preset h100 --budget 30 --experiments 1 \
    --baseline-runs 2 --work /tmp/lo --out "$OUT" >"$OUT/loop_overhead.log" 2>&1
  tail -4 "$OUT/loop_overhead.log"
  timeout 170 python3 bench/parallel_gpus.py --preset h100 --budget 30 --gpus 0 --agent nudge --minutes 1.5 \
    --experiments 40 --work /tmp/pg1 --out "$OUT" --name _smoke >"$OUT/parallel_1w.log" 2>&1
  tail -4 "$OUT/parallel_1w.log"
  python3 bench/collect_runs.py "$OUT/runs_smoke.json" /tmp/lo /tmp/pg1
  head -5 /tmp/lo/.autoresearch/runs/1-0/log.txt; grep -h "^[0-9]" /tmp/lo/results.tsv /tmp/pg1/results.tsv | cut -c1-100
}

cold_user() {  # 8 minutes: cold first steps of a root loop's runs as root and as `nobody` (AUTORESEARCH_RUN_USER),
  # alternating, each pass with an empty compile cache and the same prepared data; each pass's runs' warnings
  local pass who
  python3 -c "import os; from autoresearch.evaluator import sandbox as s
print('every run is given:', sorted(s.can_promise(os.environ)), '| tasks capped:', s.runs_capped(4096))"
  for pass in ${PASSES:-1 2}; do
    for who in ${WHO:-root nobody}; do
      rm -rf "/tmp/cu_$who" "$AUTORESEARCH_CACHE/compile" "$AUTORESEARCH_CACHE/evaluator-compile"
      CUDA_VISIBLE_DEVICES=0 AUTORESEARCH_RUN_USER=$who timeout 200 python3 bench/loop_overhead.py --preset h100 \
        --budget 5 --experiments 0 --baseline-runs 2 --work "/tmp/cu_$who" --out "$OUT/${who}_$pass" \
        >"$OUT/cold_${who}_$pass.log" 2>&1
      echo "pass $pass $who: $(grep -h 'untimed step 1 of' /tmp/cu_"$who"/.autoresearch/runs/1-*/log.txt | tr '\n' ' ')"
      grep -h "CRASH\|KEEP" "$OUT/cold_${who}_$pass.log"; grep -h 'training done' /tmp/cu_"$who"/.autoresearch/runs/1-*/log.txt
      grep -ih "warn\|error\|denied" /tmp/cu_"$who"/.autoresearch/runs/1-0/log.txt | sort | uniq -c | head -5
    done
  done
}

before_after() {  # issue 8, item 5: the one-worker loop as it was before the hand-over (commit 0163a1a, exported
  # by `git archive 0163a1a src bench pyproject.toml | tar -x -C .old` and carried) and as it is, in ORDER, on GPU 0
  for which in ${ORDER:-old new}; do
    rm -rf "/tmp/lo_$which"
    dir=$here path=$PYTHONPATH cache=$AUTORESEARCH_CACHE  # now: as setup left them
    [ "$which" = old ] && dir=$here/.old path=$here/.old/src cache=/tmp/arcache_old
    (cd "$dir" && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$path AUTORESEARCH_CACHE=$cache timeout "${BA_S:-270}" \
      python3 bench/loop_overhead.py --preset h100 --budget 30 --experiments 2 --baseline-runs 2 \
      --work "/tmp/lo_$which" --out "$OUT/$which" >"$OUT/${which}_$(date +%H%M).log" 2>&1)
    grep -h '"wall_s"\|timings' "$OUT"/${which}_*.log | tail -4
  done
}

parallel() {  # both GPUs, the tune agent; one run's evaluator killed 150 s in
  timeout 280 python3 bench/parallel_gpus.py --preset h100 --budget 30 --gpus all --agent tune --minutes 3.2 \
    --experiments 40 --kill-after 150 --work /tmp/pg2 --out "$OUT" >"$OUT/parallel_2w.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_parallel.json" /tmp/pg2
}

single() {  # the one-GPU loop as `parallel` runs it, on GPU 0; MATRIX_LR=0.05's seeds on GPU 1 (paired with sn0's)
  (CUDA_VISIBLE_DEVICES=1 timeout 270 python3 bench/seed_noise.py --preset h100 --budget 30 --seeds 4 \
     --set MATRIX_LR=0.05 --work /tmp/sn2 --out /tmp/sn2-out >"$OUT/paired2.log" 2>&1) &
  timeout 290 python3 bench/parallel_gpus.py --preset h100 --budget 30 --gpus 0 --agent tune --minutes 3.2 \
    --experiments 40 --work /tmp/pg1 --out "$OUT" --name _1gpu >"$OUT/parallel_1w.log" 2>&1
  wait
  python3 bench/collect_runs.py "$OUT/runs_single.json" /tmp/pg1 /tmp/sn2
}

nudge() {  # the same scripted changes (no recompiles) on one GPU, then on two; a first loop fills the compile cache
  local p="python3 bench/parallel_gpus.py --preset h100 --budget 30 --agent nudge --experiments 40"
  timeout 125 $p --gpus all --minutes 0.01 --work /tmp/w --out /tmp/wout >"$OUT/warm.log" 2>&1
  timeout 195 $p --gpus 0 --minutes 2.2 --work /tmp/n1 --out "$OUT" --name _nudge >"$OUT/n1.log" 2>&1
  timeout 195 $p --gpus all --minutes 2.2 --work /tmp/n2 --out "$OUT" --name _nudge >"$OUT/n2.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_nudge.json" /tmp/n1 /tmp/n2
}

ray() {  # the same through Ray on this machine
  python3 -m ray.scripts.scripts start --head --num-gpus 2 --include-dashboard=false --disable-usage-stats \
    >"$OUT/ray_start.log" 2>&1
  timeout 220 python3 bench/parallel_gpus.py --preset h100 --budget 30 --ray auto --agent tune --minutes 2 \
    --experiments 40 --work /tmp/pg3 --out "$OUT" >"$OUT/parallel_ray.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_ray.json" /tmp/pg3
  python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1
}

ray_nudge() {  # `nudge`'s two-GPU loop through Ray, on a cache an earlier phase filled
  python3 -m ray.scripts.scripts start --head --num-gpus 2 --include-dashboard=false --disable-usage-stats \
    >"$OUT/ray_start.log" 2>&1
  timeout 200 python3 bench/parallel_gpus.py --preset h100 --budget 30 --ray auto --agent nudge --minutes 2.2 \
    --experiments 40 --work /tmp/rn --out "$OUT" --name _nudge >"$OUT/ray_nudge.log" 2>&1
  python3 bench/collect_runs.py "$OUT/runs_ray_nudge.json" /tmp/rn
  python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1
}

for phase in "$@"; do
  log "$phase"
  "$phase"
done
log done
