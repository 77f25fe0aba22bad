#!/bin/sh
# Stage 2 of the nested rig's L1 (run by l1-init after switch_root, on the host's userspace
# with a tmpfs overlay). Mounts what a host has, loads KVM, then runs the command the host
# left in SCRATCH/cmd and leaves its exit status in SCRATCH/rc. An L1 that cannot offer real
# KVM writes the reason to SCRATCH/l1-failed instead, so the host fails loudly.
#
#   l1-stage2.sh SCRATCH
scratch=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The host's poweroff is systemctl, which needs systemd; busybox's calls reboot(2) directly.
power_off() { sync; /bin/busybox poweroff -f; sleep 10; /bin/busybox reboot -f; }
log() { echo "hull-l1: $*" > /dev/console; }
l1_fail() {
  log "FAILED: $*"
  echo "$*" > "$scratch/l1-failed"
  power_off
  exit 1
}

mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
# The guest side of L1 is cgroup v2 only, as on current distributions.
mount -t cgroup2 cgroup2 /sys/fs/cgroup || l1_fail "cgroup2 mount"
# Fresh state for everything a container engine keeps: the host's copies are read-only and
# overlayfs cannot be the upper layer of podman's or containerd's overlays.
for d in /run /var/tmp /var/lib/containers /var/lib/containerd /var/lib/hull /var/lib/cni; do
  mkdir -p "$d" && mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 1777 /var/tmp
mkdir -p /run/lock /run/netns

# The L1 kernel's modules, where modprobe (and the kernel's module autoloading) looks.
kdir=$(cat "$scratch/kernel-dir")
abi=$(uname -r)
mkdir -p "/lib/modules/$abi"
mount --bind "$kdir/lib/modules/$abi" "/lib/modules/$abi" || l1_fail "modules of $abi at $kdir"
grep -qw svm /proc/cpuinfo || l1_fail "the L1 CPU has no svm flag: this QEMU's TCG does not emulate AMD SVM (-cpu max)"
modprobe kvm_amd 2> "$scratch/modprobe.err" || l1_fail "modprobe kvm_amd: $(cat "$scratch/modprobe.err")"
# devtmpfs makes the node asynchronously.
for _ in $(seq 50); do [ -c /dev/kvm ] && break; sleep 0.1; done
[ -c /dev/kvm ] || l1_fail "kvm_amd loaded but /dev/kvm is missing"
# What udev does on a host: the kvm group may use it (the jailed QEMU runs with that group);
# without such a group (this host has none), everyone may, as in L1 only the tests run.
if chgrp kvm /dev/kvm 2>/dev/null; then chmod 0660 /dev/kvm; else chmod 0666 /dev/kvm; fi
for m in tun veth bridge sch_ingress act_mirred cls_u32 cls_flower overlay; do
  modprobe "$m" 2>/dev/null || log "note: module $m did not load"
done
ip link set lo up
hostname hull-l1
log "KVM ready: $(dmesg | grep -m1 -o "SVM: kvm: Nested Paging.*" || echo "kvm_amd loaded")"
# L1's symbols as this boot placed them (KASLR, and Debian's package has no System.map): a
# stall report names the function each stuck vCPU is in.
cp /proc/kallsyms "$scratch/kallsyms" 2>/dev/null || log "note: no /proc/kallsyms"
date +%s > "$scratch/l1-up"

# A heartbeat on the serial console, which needs neither virtio-fs share: run-l1.sh tells a
# dead L1 kernel (no beat) from a stuck workload (beats, no output), and a beat names tasks
# stuck in uninterruptible sleep (with their stacks, once per streak). Its busybox is copied
# to tmpfs, named busybox (so it takes its first argument as the applet), so the beat runs
# even when the root share does not answer.
mkdir -p /run/hull-l1 && cp /bin/busybox /run/hull-l1/busybox
/run/hull-l1/busybox sh -c '
  bb=/run/hull-l1/busybox streak=0
  while :; do
    d=0
    for s in /proc/[0-9]*/stat; do
      read -r line < "$s" 2>/dev/null || continue
      case ${line##*) } in D*) d=$((d + 1)) ;; esac
    done
    read -r up _ < /proc/uptime; read -r load < /proc/loadavg
    echo "hull-l1: beat up=$up load=$load D=$d" > /dev/console
    if [ $d -gt 0 ]; then streak=$((streak + 1)); else streak=0; fi
    [ $streak -eq 6 ] && echo w > /proc/sysrq-trigger
    $bb sleep 20
  done' < /dev/null > /dev/null 2>&1 &

cd "$(cat "$scratch/cwd")"
/bin/sh "$scratch/cmd" > "$scratch/out.log" 2>&1
echo $? > "$scratch/rc"
power_off
