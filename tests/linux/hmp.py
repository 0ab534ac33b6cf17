"""Send commands to QEMU's human monitor on a unix socket, one at a time,
waiting for each prompt (dump-guest-memory returns when the dump is done);
what `info` commands print goes to stdout."""
import socket
import sys


def until_prompt(sock):
    seen = b""
    while not seen.endswith(b"(qemu) "):
        chunk = sock.recv(4096)
        if not chunk:
            break
        seen += chunk
    return seen


sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
until_prompt(sock)
for command in sys.argv[2:]:
    sock.sendall(command.encode() + b"\n")
    if command == "quit":
        # Wait for QEMU to close the connection: it has read the command.
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
    else:
        reply = until_prompt(sock).decode(errors="replace")
        if command.startswith("info"):
            # The echo of the command comes first, the prompt last.
            lines = reply.replace("\r", "").split("\n")[1:-1]
            print("\n".join(lines))
