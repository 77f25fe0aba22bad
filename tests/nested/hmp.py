#!/usr/bin/env python3
"""Send HMP commands to a QEMU monitor socket and print the replies (the nested rig's
diagnostics when L1 stops: registers, local APIC state).

    tests/nested/hmp.py SOCKET COMMAND...
"""
import socket
import sys


def read_prompt(sock):
    out = b""
    while not out.endswith(b"(qemu) "):
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(sys.argv[1])
    read_prompt(sock)  # the banner
    for cmd in sys.argv[2:]:
        sock.sendall(cmd.encode() + b"\n")
        reply = read_prompt(sock)
        print(f"### {cmd}")
        # The monitor echoes the command line (with terminal escapes) before the reply.
        print(reply.split("\r\n", 1)[-1].removesuffix("(qemu) "))


if __name__ == "__main__":
    main()
