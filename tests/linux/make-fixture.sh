#!/bin/sh
# Build the Linux fixture the dump tests use, once (cached in OUT):
#   OUT/vmlinuz       Debian's cloud kernel (apt-get download, no install)
#   OUT/kallsyms      its symbols, from /proc/kallsyms of the very boot dumped
#   OUT/dump.elf      QEMU's dump-guest-memory of that boot, 2 vCPUs, 256 MiB
#   OUT/dump.kdump    the same moment as dump.elf, in QEMU's kdump-zlib
#                     (`dump-guest-memory -z`, the flattened format)
#   OUT/dump2.elf     a second dump, after the mapper mapped and mprotected more
#   OUT/registers     QEMU's own `info registers -a` at the moment of the dump
#   OUT/console.log   the guest's console
# The initramfs's /init (busybox) starts a shell, a sleeping child and a
# process that mmaps and mprotects a region (mapper.c), prints kallsyms on
# a second serial port, then says READY; QEMU TCG boots it in seconds.
# Needs: apt-get, dpkg-deb, gcc, python3, qemu-system-x86_64.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/linux-fixture}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -s "$out/dump.elf" ] && [ -s "$out/dump.kdump" ] && [ -s "$out/dump2.elf" ] && [ -s "$out/kallsyms" ] && [ -s "$out/registers" ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# The kernel: the metapackage names the current image package.
image=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
apt-get download -q "$image" busybox-static >/dev/null 2>&1 || apt-get download "$image" busybox-static
dpkg-deb -x "$image"_*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
cp kernel/boot/vmlinuz-* "$out/vmlinuz"

# The initramfs.
mkdir -p root/bin root/proc root/sys root/dev root/tmp
cp busybox/bin/busybox root/bin/busybox
gcc -static -nostdlib -ffreestanding -fno-pie -no-pie -mgeneral-regs-only -O2 -o root/bin/mapper "$here/mapper.c"
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo 0 > /proc/sys/kernel/kptr_restrict
cat /proc/kallsyms > /dev/ttyS1
sh -c 'while true; do sleep 1000; done' &
sleep 100000 &
/bin/mapper &
sleep 1
echo READY
exec sleep 100000
INIT
chmod +x root/init
python3 "$here/cpio.py" root initramfs.cpio

# Boot, wait for READY, dump through the human monitor, quit.
qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 256 -display none -nodefaults -no-reboot \
    -kernel "$out/vmlinuz" -initrd initramfs.cpio \
    -append "console=ttyS0 panic=-1 quiet pti=on" \
    -serial "file:$out/console.log" -serial "file:$out/kallsyms.part" \
    -serial "unix:$work/trigger.sock,server=on,wait=off" \
    -monitor "unix:$work/monitor.sock,server,nowait" &
qemu=$!
for _ in $(seq 1 600); do
    grep -q READY "$out/console.log" 2>/dev/null && break
    sleep 0.2
done
grep -q READY "$out/console.log" || { kill $qemu; echo "the guest never said READY" >&2; exit 1; }
python3 "$here/hmp.py" "$work/monitor.sock" stop "info registers -a" > "$out/registers"
python3 "$here/hmp.py" "$work/monitor.sock" "dump-guest-memory $out/dump.part" \
    "dump-guest-memory -z $out/dump.kdump.part" cont
# The mapper's second step, then the second dump.
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"go\n"); s.close()' "$work/trigger.sock"
for _ in $(seq 1 300); do
    grep -q MAPPED2 "$out/console.log" 2>/dev/null && break
    sleep 0.2
done
grep -q MAPPED2 "$out/console.log" || { kill $qemu; echo "the mapper never said MAPPED2" >&2; exit 1; }
python3 "$here/hmp.py" "$work/monitor.sock" stop "dump-guest-memory $out/dump2.part" quit
# The dump is complete once the monitor answered; QEMU should be gone, and
# is stopped if not.
for _ in $(seq 1 50); do kill -0 $qemu 2>/dev/null || break; sleep 0.2; done
kill $qemu 2>/dev/null || true
wait $qemu || true
mv "$out/kallsyms.part" "$out/kallsyms"
mv "$out/dump.part" "$out/dump.elf"
mv "$out/dump.kdump.part" "$out/dump.kdump"
mv "$out/dump2.part" "$out/dump2.elf"
echo "Linux fixture in $out"
