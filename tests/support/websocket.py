"""Just enough WebSocket (RFC 6455) for tests: the handshake, text and close frames, a server
side that echoes and a client that sends one message and reads the echo. Written by hand so the
test sees every byte (no dependency)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE = 0x1, 0x8


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        out += chunk
    return out


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of one unfragmented frame, unmasked."""
    first, second = _read_exact(sock, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _read_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _read_exact(sock, 8))
    mask = _read_exact(sock, 4) if second & 0x80 else b""
    payload = _read_exact(sock, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """A final frame; clients mask, servers do not."""
    head = bytes([0x80 | opcode])
    flag = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([flag | n])
    elif n < 65536:
        head += bytes([flag | 126]) + struct.pack("!H", n)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def echo_frames(sock: socket.socket) -> None:
    """Server side: echo text frames until the client closes."""
    try:
        while True:
            opcode, payload = read_frame(sock)
            if opcode == CLOSE:
                sock.sendall(frame(CLOSE, payload, masked=False))
                return
            sock.sendall(frame(opcode, payload, masked=False))
    except (ConnectionError, OSError):
        return


@dataclass
class Exchange:
    status: int  # the handshake's HTTP status
    reply: str | None  # the echoed message, when the upgrade succeeded


def exchange(
    port: int, path: str, message: str, headers: Mapping[str, str] | None = None
) -> Exchange:
    """Client side: upgrade `path` on 127.0.0.1:`port`, send `message`, read one reply, close."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-key: {key}",
        "sec-websocket-version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        if status != 101:
            return Exchange(status, None)
        response_headers = head.decode("latin-1").lower()
        if f"sec-websocket-accept: {accept_key(key).lower()}" not in response_headers:
            raise AssertionError(f"bad handshake answer: {response_headers!r}")
        sock.sendall(frame(TEXT, message.encode(), masked=True))
        opcode, payload = read_frame(sock)
        sock.sendall(frame(CLOSE, b"", masked=True))
        return Exchange(status, payload.decode() if opcode == TEXT else None)
