#!/bin/sh
# Install the tools the tests drive (gdb, QEMU, lldb, the aarch64 assembler,
# the Linux fixture's helpers, gdb 18, what Firecracker's build needs), only
# those missing. Idempotent: a
# second run installs nothing. Run as root on Debian 12:
#   sh scripts/install-test-deps.sh
# Without these tools `cargo test --release` still runs; the tests that need
# one skip with a message (unless VMEM_GDBSTUB_REQUIRE_KVM=1).
set -eu

# command:package for each tool the tests run.
tools="gdb:gdb gcc:gcc python3:python3 dpkg-deb:dpkg lldb:lldb
qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm
aarch64-linux-gnu-as:binutils-aarch64-linux-gnu gdb-multiarch:gdb-multiarch
makedumpfile:makedumpfile"

# Libraries Firecracker's build needs (tests/firecracker.rs builds it):
# bindgen's libclang, and libseccomp to link.
libraries="libclang-dev libseccomp-dev"

missing=""
for pair in $tools; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
for package in $libraries; do
    dpkg-query -W -f '${Status}\n' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $package"
done

if [ -n "$missing" ]; then
    echo "install-test-deps: installing$missing"
    apt-get update -qq
    pin=""
    case "$missing" in
    *qemu-system-*)
        # Some images ship a backported qemu-utils (10.x) whose Breaks
        # rule out the QEMU 7.2 our sources carry; move qemu-utils to the
        # version of the qemu-system packages instead of removing it.
        want=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
        have=$(dpkg-query -W -f '${Status} ${Version}\n' qemu-utils 2>/dev/null |
            sed -n 's/^install ok installed //p')
        if [ -n "$have" ] && [ -n "$want" ] && [ "$have" != "$want" ]; then
            echo "install-test-deps: qemu-utils $have -> $want (to match qemu-system $want)"
            pin="qemu-utils=$want"
        fi
        ;;
    esac
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        --allow-downgrades $missing $pin
    for pair in $tools; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || {
            echo "install-test-deps: ${pair%%:*} still missing after installing ${pair#*:}" >&2
            exit 1
        }
    done
    for package in $libraries; do
        dpkg-query -W -f '${Status}\n' "$package" | grep -q "install ok installed" || {
            echo "install-test-deps: $package did not install" >&2
            exit 1
        }
    done
else
    echo "install-test-deps: Debian packages already installed"
fi

# gdb 18 (binary `x` memory reads, tests/gdb_memory.rs) from PyPI.
if [ -x /opt/gdb18/bin/gdb ]; then
    echo "install-test-deps: gdb 18 already in /opt/gdb18"
else
    echo "install-test-deps: installing gdb 18 (PyPI gdb-for-pwndbg) in /opt/gdb18"
    python3 -m venv /opt/gdb18
    /opt/gdb18/bin/pip install -q gdb-for-pwndbg
    /opt/gdb18/bin/gdb --version | head -1
fi
