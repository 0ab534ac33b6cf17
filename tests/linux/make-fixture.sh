#!/bin/sh
# Build the Linux fixture the dump tests use, once (cached in OUT):
#   OUT/vmlinuz       Debian's cloud kernel (apt-get download, no install)
#   OUT/kallsyms      its symbols, from /proc/kallsyms of the very boot dumped
#   OUT/dump.elf      QEMU's dump-guest-memory of that boot, 2 vCPUs, 256 MiB
#   OUT/dump.kdump    the same moment as dump.elf, in QEMU's kdump-zlib
#                     (`dump-guest-memory -z`, the flattened format)
#   OUT/dump.kdump-plain  dump.kdump made plain (`makedumpfile -R`)
#   OUT/dump2.elf     a second dump, after the mapper mapped and mprotected more
#   OUT/registers     QEMU's own `info registers -a` at the moment of the dump
#   OUT/console.log   the guest's console
# The initramfs's /init (busybox) starts a shell, a sleeping child and a
# process that mmaps and mprotects a region (mapper.c), prints kallsyms on
# a second serial port, then says READY; QEMU TCG boots it in seconds.
# The VM has -device vmcoreinfo, so every dump carries the kernel's
# VMCOREINFO (the initramfs loads qemu_fw_cfg).
# Needs: apt-get, dpkg-deb, gcc, python3, qemu-system-x86_64, makedumpfile.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/linux-fixture}
mkdir -p "$out"
out=$(cd "$out" && pwd)
. "$here/lib.sh"
built "$out" dump.elf dump.kdump dump.kdump-plain dump2.elf kallsyms registers && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

fetch_kernel "$out"
write_init init <<'INIT'
/bin/mapper &
sleep 1
echo READY
exec sleep 100000
INIT
build_initramfs initramfs.cpio init "$here/mapper.c"

# Boot, wait for READY, dump through the human monitor, quit. (The console
# of an earlier build goes first: QEMU truncates it only once it runs, and
# its READY must not be taken for this boot's.)
: > "$out/console.log"
qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 256 -display none -nodefaults -no-reboot \
    -kernel "$out/vmlinuz" -initrd initramfs.cpio -device vmcoreinfo \
    -append "console=ttyS0 panic=-1 quiet pti=on" \
    -serial "file:$out/console.log" -serial "file:$out/kallsyms.part" \
    -serial "unix:$work/trigger.sock,server=on,wait=off" \
    -monitor "unix:$work/monitor.sock,server,nowait" &
qemu=$!
wait_console "$out/console.log" READY 120 $qemu
python3 "$here/hmp.py" "$work/monitor.sock" stop "info registers -a" > "$out/registers"
python3 "$here/hmp.py" "$work/monitor.sock" "dump-guest-memory $out/dump.part" \
    "dump-guest-memory -z $out/dump.kdump.part" cont
# The mapper's second step, then the second dump.
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"go\n"); s.close()' "$work/trigger.sock"
wait_console "$out/console.log" MAPPED2 60 $qemu
python3 "$here/hmp.py" "$work/monitor.sock" stop "dump-guest-memory $out/dump2.part" quit
wait_exit $qemu
mv "$out/kallsyms.part" "$out/kallsyms"
mv "$out/dump.part" "$out/dump.elf"
mv "$out/dump.kdump.part" "$out/dump.kdump"
# QEMU's flattened file made plain by makedumpfile. (Debian's QEMU writes
# only kdump-zlib, its makedumpfile no snappy or zstd and no kdump file of
# QEMU's ELF: tests/linux_kdump.rs re-encodes the plain file's pages for
# the other codecs and for pages left out.)
makedumpfile -R "$out/dump.kdump-plain.part" < "$out/dump.kdump" >/dev/null
mv "$out/dump.kdump-plain.part" "$out/dump.kdump-plain"
mv "$out/dump2.part" "$out/dump2.elf"
echo "Linux fixture in $out"
