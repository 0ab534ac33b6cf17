#!/bin/sh
# Build Firecracker with vmem-gdbstub embedded:
#   integrations/firecracker/build.sh [FC_SRC]
# FC_SRC: Firecracker v1.16.1's tree (default ../shared/firecracker/v1.16.1
# beside this repository); its micro-http git dependency is taken from
# FC_SRC/../micro-http (or $MICRO_HTTP), as this machine cannot fetch it.
# The tree is copied under target/firecracker/src, patched
# (firecracker-v1.16.1.patch) and built with both debug stubs (its own
# `gdb` feature and `vmem-gdbstub`); copy and build are cached. Needs
# libclang-dev and libseccomp-dev (scripts/install-test-deps.sh). Prints
# the binary's path last.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
src=$(cd "${1:-$root/../shared/firecracker/v1.16.1}" && pwd)
micro_http=$(cd "${MICRO_HTTP:-$src/../micro-http}" && pwd)
patch=$here/firecracker-v1.16.1.patch
out=$root/target/firecracker
stamp="$(sha256sum "$patch" | cut -d' ' -f1) $src"

if [ "$(cat "$out/src/.vmem-gdbstub-patched" 2>/dev/null)" != "$stamp" ]; then
    echo "build.sh: copying $src to $out/src and patching it" >&2
    rm -rf "$out/src"
    mkdir -p "$out"
    cp -r "$src" "$out/src"
    (cd "$out/src" && patch -p1 --quiet --forward < "$patch")
    sed -i "s|@VMEM_GDBSTUB@|$root|" "$out/src/src/vmm/Cargo.toml"
    # vmem-gdbstub's kvm-ioctls 0.25 needs kvm-bindings 0.14.1 or later;
    # Firecracker's lock has 0.14.0 (the same API).
    (cd "$out/src" && cargo update -q -p kvm-bindings --precise 0.14.2 \
        --config "patch.\"https://github.com/firecracker-microvm/micro-http\".micro_http.path=\"$micro_http\"")
    echo "$stamp" > "$out/src/.vmem-gdbstub-patched"
fi
cd "$out/src"
cargo build --release -p firecracker --features gdb,vmem-gdbstub \
    --target-dir "$out/build" \
    --config "patch.\"https://github.com/firecracker-microvm/micro-http\".micro_http.path=\"$micro_http\"" >&2
echo "$out/build/release/firecracker"
