#!/usr/bin/env bash
# What a machine offers to cap a run's tasks when the loop runs as root (device call; prints only):
# its cgroup setup, whether a pids group can be made, and whether a run dropped to an unprivileged uid
# (setpriv, then bubblewrap's own user namespace) is bound by RLIMIT_NPROC.
set -u
for f in .bw/*.deb; do dpkg -x "$f" /tmp/bw; done
export PATH=/tmp/bw/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/bw/usr/lib/x86_64-linux-gnu
echo "== id: $(id)  kernel: $(uname -r)  pid_max: $(cat /proc/sys/kernel/pid_max)"
echo "== /proc/self/cgroup"; cat /proc/self/cgroup
echo "== cgroup mounts"; grep cgroup /proc/self/mountinfo
echo "== /sys/fs/cgroup"; ls -la /sys/fs/cgroup | head -40
for f in cgroup.controllers cgroup.subtree_control cgroup.type; do echo "-- $f: $(cat /sys/fs/cgroup/$f 2>&1)"; done
echo "== try a child cgroup (v2 only)"
if [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir /sys/fs/cgroup/probe-ar 2>&1; then
  echo "controllers in it: $(cat /sys/fs/cgroup/probe-ar/cgroup.controllers 2>&1)"
  echo "+pids in its subtree_control: $(echo +pids > /sys/fs/cgroup/probe-ar/cgroup.subtree_control 2>&1 && echo ok)"
  rmdir /sys/fs/cgroup/probe-ar
fi
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  echo "processes in the top: $(wc -l < /sys/fs/cgroup/cgroup.procs 2>&1)"
fi
echo "== sysctls"; for s in kernel.unprivileged_userns_clone user.max_user_namespaces kernel.apparmor_restrict_unprivileged_userns; do echo "$s=$(sysctl -n $s 2>&1)"; done
echo "== capsh"; grep -E '^Cap(Eff|Bnd)' /proc/self/status
echo "== nobody: $(getent passwd nobody)"; command -v setpriv
echo "== bwrap as nobody"
setpriv --reuid 65534 --regid 65534 --clear-groups bwrap --unshare-user --unshare-pid --ro-bind / / --dev /dev --proc /proc bash -c 'cat /proc/self/uid_map; id' 2>&1
echo "== RLIMIT_NPROC 40 as nobody in bwrap, 80 forks"
setpriv --reuid 65534 --regid 65534 --clear-groups bwrap --unshare-user --unshare-pid --ro-bind / / --dev /dev --proc /proc \
  bash -c 'ulimit -u 40; for i in $(seq 80); do sleep 3 & done 2>/dev/null; echo started=$(jobs -p | wc -l)' 2>&1 | tail -1
echo "== the same as root"
bwrap --unshare-user --unshare-pid --ro-bind / / --dev /dev --proc /proc \
  bash -c 'ulimit -u 40; for i in $(seq 80); do sleep 3 & done 2>/dev/null; echo started=$(jobs -p | wc -l)' 2>&1 | tail -1
echo "== GPU device nodes"; ls -la /dev/nvidia* 2>&1 | head
echo "== python: $(command -v python3) $(python3 -c 'import sys, torch; print(sys.prefix, torch.__file__)' 2>&1)"; ls -ld / /root /usr /usr/local 2>&1
