#!/bin/sh
# Boot Firecracker (built by build.sh) with vmem-gdbstub listening on ADDR:
#   integrations/firecracker/run.sh --listen ADDR [--vcpus N] [--guest ELF]
#       [--mem MIB] [-- FIRECRACKER_ARGS...]
# The guest (default: this repository's demo guest, 2 vCPUs) runs at once;
# attach gdb at any time: gdb -ex "target remote ADDR". No API socket;
# Ctrl-C ends it. Port 0 picks a free port: the log line "vmem-gdbstub
# listening on" says which.
# --fc-socket PATH instead of --listen: Firecracker's own gdb stub on that
# unix socket (it waits for gdb before the first instruction), to compare.
# FIRECRACKER=path skips build.sh.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
listen="" vcpus=2 mem=64 guest="" fc_socket=""
while [ $# -gt 0 ]; do
    case "$1" in
    --listen) listen=$2; shift 2 ;;
    --vcpus) vcpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --guest) guest=$2; shift 2 ;;
    --fc-socket) fc_socket=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$listen$fc_socket" in
"") echo "usage: run.sh --listen ADDR | --fc-socket PATH [--vcpus N] [--guest ELF]" >&2; exit 2 ;;
esac
if [ -n "$listen" ] && [ -n "$fc_socket" ]; then
    echo "run.sh: --listen and --fc-socket exclude each other (one debugger per VM)" >&2
    exit 2
fi
firecracker=${FIRECRACKER:-$(sh "$here/build.sh" | tail -1)}
if [ -z "$guest" ]; then
    # The demo guest, as cargo builds it for the demo VM.
    (cd "$root" && cargo build -q --release --example demo-vm) >&2
    guest=$(ls -t "$root"/target/release/build/vmem-gdbstub-*/out/demo-guest.elf | head -1)
fi
guest=$(cd "$(dirname "$guest")" && pwd)/$(basename "$guest")
config=$(mktemp -d)/vm.json
trap 'rm -rf "$(dirname "$config")"' EXIT
if [ -n "$listen" ]; then
    stub="\"vmem_gdb_listen\": \"$listen\""
else
    stub="\"gdb_socket_path\": \"$fc_socket\""
fi
cat > "$config" <<JSON
{
  "boot-source": { "kernel_image_path": "$guest" },
  "drives": [],
  "machine-config": { "vcpu_count": $vcpus, "mem_size_mib": $mem, $stub }
}
JSON
echo "run.sh: $firecracker, guest $guest, $vcpus vCPUs, gdb on $listen$fc_socket" >&2
"$firecracker" --no-api --no-seccomp --config-file "$config" --level Info "$@" &
fc=$!
trap 'kill $fc 2>/dev/null; rm -rf "$(dirname "$config")"' EXIT INT TERM
wait $fc
