#!/bin/busybox sh
# /init of the L1 guest (Debian kernel under QEMU TCG/SVM or Bochs/VMX).
#
# Kernel command line (set by `cargo xtask nested`):
#   okvm.hv=linux,okvm            hypervisors to load in turn (never two at once)
#   okvm.work=suite,l2_qemu72     workloads to run on each of them (the `case $w` below)
#   okvm.n=N okvm.t=S okvm.l2t=S  exits per timed suite test, per-test and per-L2-boot limits (L1 s)
#   okvm.tests=a,b                suite tests to run (default: all)
# Every result is one line "@@ RESULT hv=.. name=.. status=PASS|FAIL|UNSUPPORTED ..." on the
# console; the host harness adds host timestamps and checks that every planned result came.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp

arg() {
	for a in $(cat /proc/cmdline); do
		case "$a" in "$1"=*) echo "${a#*=}"; return;; esac
	done
	echo "$2"
}
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }'; }

HVS=$(arg okvm.hv linux | tr , ' ')
WORK=$(arg okvm.work suite | tr , ' ')
N=$(arg okvm.n 20000)
T=$(arg okvm.t 120)
L2T=$(arg okvm.l2t 600)
TESTS=$(arg okvm.tests "" | tr , ' ')
L2APPEND="console=ttyS0 panic=-1 quiet"
L2SMP=1
# The acceptance boots on okvm use QEMU's userspace irqchip; say so explicitly.
irqchip_off() { [ "$1" = okvm ] && echo "-machine kernel-irqchip=off"; }

if grep -q -m1 GenuineIntel /proc/cpuinfo; then VENDOR=intel; else VENDOR=amd; fi
FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
have() { case "$FLAGS" in *" $1 "*) echo 1;; *) echo 0;; esac; }
echo "@@ L1 uptime=$(up) kernel=$(uname -r) vendor=$VENDOR svm=$(have svm) npt=$(have npt) vmx=$(have vmx) ept=$(grep -c -m1 '^vmx flags.* ept' /proc/cpuinfo)"

# hv_load HV: load one hypervisor's modules; prints an "@@ HV" line; fails if no /dev/kvm.
hv_load() {
	t0=$(up)
	case "$1" in
	linux)
		mods="irqbypass kvm"
		[ $VENDOR = amd ] && mods="$mods ccp kvm-amd" || mods="$mods kvm-intel"
		;;
	okvm)
		mods="okvm"
		;;
	*)
		echo "@@ HV hv=$1 status=FAIL msg=\"unknown hypervisor\""; return 1;;
	esac
	for m in $mods; do
		if [ ! -f /modules/$m.ko ]; then
			echo "@@ HV hv=$1 status=FAIL msg=\"$m.ko is not in the image\""; return 1
		fi
		if ! out=$(insmod /modules/$m.ko 2>&1); then
			echo "@@ HV hv=$1 status=FAIL msg=\"insmod $m: $out\""
			dmesg | tail -15
			return 1
		fi
	done
	params=""
	for p in /sys/module/kvm_amd/parameters/npt /sys/module/kvm_amd/parameters/nested \
	    /sys/module/kvm_intel/parameters/ept /sys/module/kvm_intel/parameters/unrestricted_guest \
	    /sys/module/kvm_intel/parameters/vpid /sys/module/kvm_intel/parameters/nested; do
		[ -e $p ] && params="$params ${p##*/}=$(cat $p)"
	done
	if [ ! -c /dev/kvm ]; then
		echo "@@ HV hv=$1 status=FAIL msg=\"no /dev/kvm after loading $mods\""
		dmesg | tail -15
		return 1
	fi
	echo "@@ HV hv=$1 status=PASS load_secs=$(since $t0)$params"
}

# hv_unload HV: remove its modules again (reverse order), so the next one can register /dev/kvm.
hv_unload() {
	case "$1" in
	linux) mods="kvm-amd kvm-intel ccp kvm irqbypass";;
	okvm) mods="okvm";;
	esac
	for m in $mods; do
		grep -q "^$(echo $m | tr - _) " /proc/modules && rmmod $m
	done
	[ -c /dev/kvm ] && echo "@@ NOTE /dev/kvm still present after unloading $1"
	return 0
}

# l2_boot HV NAME QEMU...: boot the L2 kernel with a QEMU; PASS when its marker shows.
# L2ADD: more L2 kernel arguments; L2WANT: space-separated patterns (grep -E) that the result's
# fields (the marker's, and the QEMU trace counts below) must also match, e.g. "rng=64".
L2ADD="" L2WANT=""
# QEMU trace events (-trace, log backend, to a file: on stderr they would split the serial
# console's lines, written one character at a time) counted from an L2 boot: KVM_IOEVENTFD,
# KVM_IRQFD and KVM_SIGNAL_MSI VM ioctls, virtqueue notifies QEMU handled itself after an MMIO
# exit (none when the ioeventfd caught them), device interrupts QEMU sent through an irqfd.
L2TRACE="-D /tmp/l2.trace -trace kvm_vm_ioctl -trace virtio_pci_notify_write -trace virtio_notify_irqfd"
qemu_counts() {
	echo "ioeventfd_ioctls=$(grep -c 'kvm_vm_ioctl type 0x4040ae79' $1)" \
	    "irqfd_ioctls=$(grep -c 'kvm_vm_ioctl type 0x4020ae76' $1)" \
	    "signal_msi_ioctls=$(grep -c 'kvm_vm_ioctl type 0x4020aea5' $1)" \
	    "user_notifies=$(grep -c 'virtio_pci_notify_write ' $1)" \
	    "irqfd_notifies=$(grep -c 'virtio_notify_irqfd ' $1)"
}
l2_boot() {
	hv=$1 name=$2
	shift 2
	echo "@@ BEGIN hv=$hv name=$name"
	rm -f /tmp/l2.trace
	t0=$(up)
	timeout -s KILL $L2T "$@" -enable-kvm -cpu host -m 256 -smp $L2SMP -nodefaults -display none \
	    -serial stdio -monitor none -no-reboot -kernel /l2/vmlinuz -initrd /l2/initrd.cpio \
	    -append "$L2APPEND${L2ADD:+ $L2ADD}" </dev/null >/tmp/l2.log 2>&1
	rc=$?
	secs=$(since $t0)
	sed 's/^/L2| /' /tmp/l2.log | tail -60
	marker=$(grep -o 'OKVM-L2-MARKER .*' /tmp/l2.log | head -1 | tr -d '\r"')
	# The guest must also have brought up every CPU it was given.
	miss=""
	echo "$marker" | grep -Eq "OKVM-L2-MARKER .* cpus=$L2SMP([^0-9]|\$)" || miss="cpus=$L2SMP"
	# the marker's own fields (uptime, mods, rng, ...) go into the result line, cpus as wanted
	fields=$(echo "$marker" | cut -d' ' -f2- | tr ' ' '\n' | grep -v '^cpus=' | grep '=' | tr '\n' ' ')
	case " $* " in *" kvm_vm_ioctl "*) fields="$fields$(qemu_counts /tmp/l2.trace)";; esac
	set -f # the patterns are not file names
	for w in $L2WANT; do
		echo " $fields " | grep -Eq " $w " || miss="$miss $w"
	done
	set +f
	if [ -z "$miss" ]; then
		echo "@@ RESULT hv=$hv name=$name status=PASS secs=$secs rc=$rc cpus=$L2SMP $fields"
	elif [ -n "$marker" ]; then
		echo "@@ RESULT hv=$hv name=$name status=FAIL secs=$secs rc=$rc $fields msg=\"marker without$miss: $marker\""
	else
		last=$(grep -v '^$' /tmp/l2.log | tail -1 | tr -d '"' | cut -c1-160)
		echo "@@ RESULT hv=$hv name=$name status=FAIL secs=$secs rc=$rc msg=\"no marker: $last\""
	fi
}

# l2_virtio HV NAME [QEMU ARGS]: QEMU 10.0 with virtio-rng-pci and virtio-blk-pci (a null block
# device) on an iothread: QEMU serves their queue notifies with ioeventfds and sends virtio-blk's
# MSI-X interrupts through irqfds. The L2 reads 64 random bytes and 4 KiB of the disk; QEMU's
# own trace must show ioeventfds and irqfds assigned, interrupts sent through an irqfd, and no
# notify that reached QEMU as an MMIO exit.
l2_virtio() {
	vhv=$1 vname=$2
	shift 2
	L2ADD="okvm.virtio"
	L2WANT="mods=7/7 rng=64 blk=4096 msi_irqs=[1-9][0-9]* ioeventfd_ioctls=[1-9][0-9]*"
	L2WANT="$L2WANT irqfd_ioctls=[1-9][0-9]* irqfd_notifies=[1-9][0-9]* user_notifies=0"
	l2_boot $vhv $vname /qemu10/bin/qemu-system-x86_64 -L /qemu10/share "$@" \
	    -device virtio-rng-pci \
	    -object iothread,id=io0 -blockdev driver=null-co,node-name=nul0,read-zeroes=on \
	    -device virtio-blk-pci,drive=nul0,iothread=io0 $L2TRACE
	L2ADD="" L2WANT=""
}

for hv in $HVS; do
	if hv_load $hv; then
		for w in $WORK; do
			case $w in
			suite) /bin/kvmsuite --hv $hv -n $N -t $T $TESTS ;;
			l2_qemu72) l2_boot $hv $w /usr/bin/qemu-system-x86_64 $(irqchip_off $hv) ;;
			l2_qemu72_smp2)
				L2SMP=2
				l2_boot $hv $w /usr/bin/qemu-system-x86_64 $(irqchip_off $hv)
				L2SMP=1
				;;
			l2_qemu72_split_smp2)
				# The in-kernel local APIC (split irqchip: IOAPIC/PIC/PIT stay in QEMU).
				L2SMP=2
				l2_boot $hv $w /usr/bin/qemu-system-x86_64 -machine kernel-irqchip=split
				L2SMP=1
				;;
			l2_qemu10) l2_boot $hv $w /qemu10/bin/qemu-system-x86_64 -L /qemu10/share ;;
			l2_qemu10_smp2)
				# QEMU's default kernel-irqchip=on: LAPICs, PICs, IOAPIC and PIT in the
				# kernel, 2 vCPUs.
				L2SMP=2
				l2_boot $hv $w /qemu10/bin/qemu-system-x86_64 -L /qemu10/share
				L2SMP=1
				;;
			l2_qemu10_split)
				# QEMU >= 8.2 with the split irqchip needs KVM_IOEVENTFD and KVM_IRQFD.
				l2_boot $hv $w /qemu10/bin/qemu-system-x86_64 -L /qemu10/share \
				    -machine kernel-irqchip=split
				;;
			l2_qemu10_split_virtio) l2_virtio $hv $w -machine kernel-irqchip=split ;;
			# The same with QEMU's default full in-kernel irqchip.
			l2_qemu10_virtio) l2_virtio $hv $w ;;
			*) echo "@@ RESULT hv=$hv name=$w status=FAIL msg=\"unknown workload\"" ;;
			esac
		done
	fi
	hv_unload $hv
done
echo "@@ DONE uptime=$(up)"
# Let the UART drain: Bochs sends at the emulated baud rate, and a power-off drops what the
# tty still holds (the last results went missing on a Penryn run).
sleep 3
poweroff -f
