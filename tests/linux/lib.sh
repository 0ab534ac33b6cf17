# Shared by the fixture scripts (sourced): fetch Debian's kernel and
# busybox, build an initramfs, boot it under QEMU TCG and wait for words on
# its console. Each function works in the current directory.

# built OUT FILE...: whether every FILE is in OUT, not empty (the fixture
# is cached there).
built() {
    dir=$1
    shift
    for f in "$@"; do
        [ -s "$dir/$f" ] || return 1
    done
}

# fetch_kernel OUT: OUT/vmlinuz (the cloud kernel the metapackage names) and
# ./busybox/bin/busybox.
fetch_kernel() {
    image=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
    apt-get download -q "$image" busybox-static >/dev/null 2>&1 || apt-get download "$image" busybox-static
    dpkg-deb -x "$image"_*.deb kernel
    dpkg-deb -x busybox-static_*.deb busybox
    cp kernel/boot/vmlinuz-* "$1/vmlinuz"
}

# write_init FILE: a busybox /init that mounts proc, sys and dev, prints
# kallsyms on the second serial port (KALLSYMS_TO: another device, or
# "console" for the console between KALLSYMS-BEGIN and KALLSYMS-END
# lines), starts a shell loop and a sleeper, then runs the lines read from
# stdin (the fixture's own processes).
write_init() {
    {
        cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo 0 > /proc/sys/kernel/kptr_restrict
# QEMU's fw_cfg driver hands the kernel's VMCOREINFO to -device vmcoreinfo
# (the driver writes it as it loads), so dumps carry it.
[ -f /lib/qemu_fw_cfg.ko ] && insmod /lib/qemu_fw_cfg.ko
INIT
        case "${KALLSYMS_TO:-/dev/ttyS1}" in
        console) echo 'echo KALLSYMS-BEGIN; cat /proc/kallsyms; echo KALLSYMS-END' ;;
        *) echo "cat /proc/kallsyms > ${KALLSYMS_TO:-/dev/ttyS1}" ;;
        esac
        cat <<'INIT'
sh -c 'while true; do sleep 1000; done' &
sleep 100000 &
INIT
        cat
    } > "$1"
}

# build_initramfs CPIO INIT PROGRAM.c...: ./root with busybox, the
# kernel's qemu_fw_cfg module, INIT as /init and each freestanding C
# program as /bin/NAME, packed into CPIO.
build_initramfs() {
    cpio=$1 init=$2
    shift 2
    mkdir -p root/bin root/proc root/sys root/dev root/tmp root/lib
    cp busybox/bin/busybox root/bin/busybox
    find kernel/lib/modules -name qemu_fw_cfg.ko -exec cp {} root/lib/ \;
    for program in "$@"; do
        gcc -static -nostdlib -ffreestanding -fno-pie -no-pie -mgeneral-regs-only -O2 \
            -o "root/bin/$(basename "$program" .c)" "$program"
    done
    cp "$init" root/init
    chmod +x root/init
    python3 "$here/cpio.py" root "$cpio"
}

# wait_console FILE WORD SECONDS PID: until WORD is in FILE; kills PID and
# fails if it never comes.
wait_console() {
    for _ in $(seq 1 $(($3 * 5))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    kill "$4" 2>/dev/null || true
    echo "the guest never said $2" >&2
    exit 1
}

# wait_exit PID: QEMU told to quit has read the command once the monitor
# answered; give it 10 s to be gone, then stop it.
wait_exit() {
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
    kill "$1" 2>/dev/null || true
    wait "$1" || true
}
