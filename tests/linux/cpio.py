"""Write a directory as a newc cpio archive (what the kernel unpacks as an
initramfs), so the fixture needs no cpio tool."""
import os
import stat
import sys


def header(name, mode, size, ino, nlink=1):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"


def pad(out):
    out.write(b"\0" * (-out.tell() % 4))


def main(root, path):
    with open(path, "wb") as out:
        ino = 1
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [""] + sorted(filenames) + dirnames:
                full = os.path.join(dirpath, name) if name else dirpath
                rel = os.path.relpath(full, root)
                if rel == "." or (name in dirnames and name):
                    if rel == ".":
                        continue
                st = os.lstat(full)
                data = b""
                if stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        data = f.read()
                elif stat.S_ISLNK(st.st_mode):
                    data = os.readlink(full).encode()
                out.write(header(rel, st.st_mode, len(data), ino))
                pad(out)
                out.write(data)
                pad(out)
                ino += 1
        out.write(header("TRAILER!!!", 0, 0, 0))
        pad(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
