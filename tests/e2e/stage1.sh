#!/bin/busybox sh
# /init of the e2e initramfs (rig.py packs it with busybox-static and the modules listed in
# /modules/load-order). Owns only getting onto the real root: it mounts this machine's "/",
# shared read-only over virtio-9p, under a tmpfs overlay, and switch_roots to stage2.sh, whose
# path comes on the kernel command line as e2e.stage2=.
# Anything going wrong powers the VM off at once, so the host sees it without waiting for its
# timeout; the console log (ttyS0) says what happened.

/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

die() {
    echo "e2e stage1: $*"
    poweroff -f
}

# Parameters with a dot are module parameters to the kernel: they are not passed to init as
# arguments or environment, but they are in /proc/cmdline (init/main.c, unknown_bootoption).
cmdline_value() {
    sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline
}

while read -r module; do
    insmod "/modules/$module" || die "insmod $module failed"
done </modules/load-order

# cache=loose: the lower layer is read-only and nothing changes it during a run.
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /lower ||
    die "cannot mount the 9p share 'hostroot'"
mount -t tmpfs -o mode=755 tmpfs /rw || die "cannot mount the tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    die "cannot mount the overlay"

stage2=$(cmdline_value e2e.stage2)
[ -x "/newroot$stage2" ] || die "e2e.stage2='$stage2' is not an executable on the shared root"
echo "e2e stage1: root mounted at $(cut -d' ' -f1 /proc/uptime) s uptime, switching to $stage2"
umount /proc /sys /dev
exec switch_root /newroot "$stage2"
