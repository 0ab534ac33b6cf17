#!/bin/sh
# The Linux guest at scale, for benchmarks (cached in OUT):
#   OUT/vmlinuz, OUT/initramfs.cpio  Debian's cloud kernel and an initramfs
#                     whose /init starts spray.c (13 processes, each mapping
#                     the same 256 MiB file page by page: ~850,000 4 KiB
#                     mappings that do not coalesce; they keep reading them, so
#                     the CPUs are in their spaces) beside a shell and two
#                     sleepers, then says SPRAYED
#   OUT/dump.elf      QEMU's dump-guest-memory of it: 4 GiB, 2 vCPUs
#   OUT/kallsyms      its symbols
# `make-scale-fixture.sh boot OUT QEMU-ARGS...` boots the same guest again
# (console in OUT/console.log) with extra QEMU arguments, for a live run.
# Needs: apt-get, dpkg-deb, gcc, python3, qemu-system-x86_64.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

boot() {
    dir=$1
    shift
    : > "$dir/console.log"
    exec qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 4G -display none -nodefaults \
        -no-reboot -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.cpio" \
        -append "console=ttyS0 panic=-1 quiet pti=on" \
        -serial "file:$dir/console.log" "$@"
}

if [ "${1:-}" = boot ]; then
    shift
    boot "$@"
fi

out=${1:-$here/../../target/linux-scale}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -s "$out/dump.elf" ] && [ -s "$out/kallsyms" ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
. "$here/lib.sh"
fetch_kernel "$out"
write_init init <<'INIT'
/bin/spray &
exec sleep 100000
INIT
build_initramfs "$out/initramfs.cpio" init "$here/spray.c"

(boot "$out" -serial "file:$out/kallsyms.part" -monitor "unix:$work/monitor.sock,server,nowait") &
qemu=$!
wait_console "$out/console.log" SPRAYED 600 $qemu
python3 "$here/hmp.py" "$work/monitor.sock" stop "dump-guest-memory $out/dump.part" quit
wait_exit $qemu
mv "$out/kallsyms.part" "$out/kallsyms"
mv "$out/dump.part" "$out/dump.elf"
echo "Linux scale fixture in $out"
