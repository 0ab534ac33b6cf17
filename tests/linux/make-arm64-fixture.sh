#!/bin/sh
# Build the arm64 Linux fixture, once (cached in OUT):
#   OUT/Image         Debian's arm64 cloud kernel (48-bit VA, 4 KiB pages,
#                     KASLR), fetched for arm64 with a private apt setup
#                     (nothing of the host's apt configuration changes)
#   OUT/kallsyms      /proc/kallsyms of the very boot dumped
#   OUT/dump.elf      QEMU's dump-guest-memory of that boot (virt, -cpu max,
#                     2 vCPUs, 512 MiB, -device vmcoreinfo)
#   OUT/dump.kdump    the same moment in QEMU's kdump-zlib (flattened)
#   OUT/dump2.elf     a second dump, after the guest started one more
#                     process (a line sent to its console)
#   OUT/registers     QEMU's `info registers -a` at that moment
#   OUT/gdb-reads     what QEMU's own gdbstub read then (gdb-multiarch):
#                     kernel text (_stext), init_uts_ns's sysname and
#                     release, swapper_pg_dir (this kernel has no
#                     CONFIG_KALLSYMS_ALL: no data symbols in kallsyms, so
#                     the last three are where its VMCOREINFO says)
#   OUT/sysregs       each CPU's TTBR0_EL1, TTBR1_EL1 and TCR_EL1 as QEMU's
#                     gdbstub read them then (the dump has no system
#                     registers)
#   OUT/busybox       the arm64 busybox the guest's processes run
#   OUT/console.log   the guest's console
# QEMU TCG boots it in seconds. Needs: apt-get, dpkg-deb, python3,
# qemu-system-aarch64, gdb-multiarch.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/linux-arm64-fixture}
mkdir -p "$out"
out=$(cd "$out" && pwd)
. "$here/lib.sh"
built "$out" Image kallsyms dump.elf dump.kdump dump2.elf registers gdb-reads sysregs busybox && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# arm64 packages through an apt setup of our own: its own sources, lists
# and cache, arm64 as the only architecture.
mkdir -p apt/lists/partial apt/cache/archives/partial
echo "deb [arch=arm64] http://deb.debian.org/debian bookworm main" > apt/sources.list
apt_options="-o Dir::Etc::SourceList=$work/apt/sources.list -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists=$work/apt/lists -o Dir::Cache=$work/apt/cache
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64"
# shellcheck disable=SC2086
apt-get -q $apt_options update >/dev/null
# shellcheck disable=SC2086
image=$(apt-cache $apt_options depends linux-image-cloud-arm64 |
    sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
# shellcheck disable=SC2086
apt-get -q $apt_options download "$image" busybox-static >/dev/null 2>&1
dpkg-deb -x "$image"_*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
cp kernel/boot/vmlinuz-* "$out/Image"
cp busybox/bin/busybox "$out/busybox"

KALLSYMS_TO=console write_init init <<'INIT'
sleep 1
echo READY
read -r go
sleep 100001 &
sleep 1
echo STARTED
exec sleep 100000
INIT
build_initramfs initramfs.cpio init

: > "$out/console.log"
qemu-system-aarch64 -machine virt -cpu max -smp 2 -m 512 -display none -nodefaults -no-reboot \
    -kernel "$out/Image" -initrd initramfs.cpio -device vmcoreinfo \
    -append "console=ttyAMA0 panic=-1 quiet" \
    -chardev "socket,id=console,path=$work/console.sock,server=on,wait=off,logfile=$out/console.log" \
    -serial chardev:console \
    -gdb "unix:$work/gdb.sock,server=on,wait=off" \
    -monitor "unix:$work/monitor.sock,server,nowait" &
qemu=$!
wait_console "$out/console.log" READY 180 $qemu
python3 "$here/hmp.py" "$work/monitor.sock" stop "info registers -a" > "$out/registers"
python3 "$here/hmp.py" "$work/monitor.sock" "dump-guest-memory $out/dump.part" \
    "dump-guest-memory -z $out/dump.kdump.part"
# The kallsyms the console carried, and what QEMU's gdbstub reads at the
# moment of the dump (the VM has not run since).
tr -d '\r' < "$out/console.log" | sed -n '/^KALLSYMS-BEGIN$/,/^KALLSYMS-END$/p' |
    sed '1d;$d' > "$out/kallsyms.part"
symbol() { awk -v name="$1" '$3 == name { print "0x" $1; exit }' "$out/kallsyms.part"; }
vmcoreinfo() {
    python3 -c 'import re,sys; d=open(sys.argv[1],"rb").read(1<<20); print("0x"+re.search(rb"SYMBOL\("+sys.argv[2].encode()+rb"\)=([0-9a-f]+)",d).group(1).decode())' \
        "$out/dump.part" "$1"
}
uts=$(vmcoreinfo init_uts_ns)
gdb-multiarch -batch -nx -ex "target remote $work/gdb.sock" \
    -ex "x/8xg $(symbol _stext)" -ex "x/s $uts" -ex "x/s $uts+130" \
    -ex "x/8xg $(vmcoreinfo swapper_pg_dir)" -ex "info registers pc sp cpsr" \
    > "$out/gdb-reads.part" 2>&1
# shellcheck disable=SC2016
gdb-multiarch -batch -nx -ex "target remote $work/gdb.sock" \
    -ex "thread 1" -ex 'p/x $TTBR0_EL1' -ex 'p/x $TTBR1_EL1' -ex 'p/x $TCR_EL1' \
    -ex "thread 2" -ex 'p/x $TTBR0_EL1' -ex 'p/x $TTBR1_EL1' -ex 'p/x $TCR_EL1' \
    > "$out/sysregs.part" 2>&1
# One more process, then the second dump.
python3 "$here/hmp.py" "$work/monitor.sock" cont
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"go\n")' \
    "$work/console.sock"
wait_console "$out/console.log" STARTED 60 $qemu
python3 "$here/hmp.py" "$work/monitor.sock" stop "dump-guest-memory $out/dump2.part" quit
wait_exit $qemu
mv "$out/kallsyms.part" "$out/kallsyms"
mv "$out/gdb-reads.part" "$out/gdb-reads"
mv "$out/sysregs.part" "$out/sysregs"
mv "$out/dump.part" "$out/dump.elf"
mv "$out/dump.kdump.part" "$out/dump.kdump"
mv "$out/dump2.part" "$out/dump2.elf"
echo "arm64 Linux fixture in $out"
