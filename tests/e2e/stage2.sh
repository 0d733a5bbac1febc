#!/bin/bash
# PID 1 of the emulated SR-IOV host, on this machine's own "/" (read-only 9p, tmpfs overlay).
# Owns the VM's base system: the pseudo filesystems, the results share, the NIC drivers and
# PF links (there is no udev and no systemd here), then hands over to the scenario given on the
# kernel command line (e2e.scenario=, run by e2e.python=) and powers off whatever happens.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
RESULTS=/run/e2e/results

say() { echo "e2e stage2 [$(cut -d' ' -f1 /proc/uptime 2>/dev/null) s]: $*"; }

# Writing to /proc/sysrq-trigger works whatever kernel.sysrq says (that mask is for the
# keyboard only, Documentation/admin-guide/sysrq.rst); 'o' powers off, and QEMU then exits.
power_off() {
    sync
    say "powering off"
    echo o >/proc/sysrq-trigger
    sleep 60
}
trap power_off EXIT

cmdline_value() {
    sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline
}

mount_base() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    ln -sfn /proc/self/fd /dev/fd
    # /run and /tmp are fresh and empty: nothing of this machine's state leaks in there. A
    # checkout that lives under one of them (a CI clone in /tmp, say) is carried across.
    local repo top
    repo=$(dirname "$(dirname "$(dirname "$(cmdline_value e2e.scenario)")")")
    for top in /run /tmp; do
        case "$repo/" in
        "$top"/*)
            mkdir -p /.e2e-keep
            mount --bind "$repo" /.e2e-keep
            ;;
        esac
    done
    mount -t tmpfs -o mode=755 tmpfs /run
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    if mountpoint -q /.e2e-keep 2>/dev/null; then
        mkdir -p "$repo"
        mount --move /.e2e-keep "$repo"
    fi
    # libvirt puts each QEMU into a cgroup (v2 here).
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
    mkdir -p "$RESULTS"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$RESULTS"
    # libvirt's QEMU capability cache, kept by rig.py across runs (probing costs ~25 s per boot
    # under TCG; libvirt itself checks that each entry still matches).
    mkdir -p /var/cache/libvirt/qemu
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 cache /var/cache/libvirt/qemu ||
        say "no libvirt cache share: libvirtd will probe QEMU again"
}

# syslog (the vfalloc hook and its hot-plug worker log there, facility daemon) goes to the
# results share, one file per boot.
start_syslog() {
    busybox syslogd -O "$RESULTS/syslog-boot$(cmdline_value e2e.boot).log" || say "syslogd failed"
}

# Without udev nothing loads drivers on its own. igbvf and vfio-pci go first so that VFs get
# a driver the moment sriov_numvfs creates them.
load_drivers() {
    modprobe -a igbvf vfio-pci igb || say "modprobe failed"
}

# libvirt refuses a VF whose PF link is down ("the PF is not online"; docs/architecture.md, "libvirt").
pf_links_up() {
    ip link set lo up
    local dev
    for dev in /sys/class/net/*/device/sriov_totalvfs; do
        dev=${dev#/sys/class/net/}
        dev=${dev%%/*}
        ip link set "$dev" up && say "PF $dev up"
    done
}

mount_base
exec </dev/null >/dev/console 2>&1
hostname e2e-host
start_syslog
say "kernel $(uname -r), userspace up"
load_drivers
pf_links_up

python=$(cmdline_value e2e.python)
scenario=$(cmdline_value e2e.scenario)
say "running $python $scenario"
"$python" "$scenario" --results "$RESULTS" --boot "$(cmdline_value e2e.boot)"
say "scenario exited $?"
