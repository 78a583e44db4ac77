"""A minimal WebSocket client (RFC 6455) on asyncio streams: enough to follow a console page.

The bench needs no third-party client for this: a handshake, masked client frames, and
unmasked server frames (text, binary, continuation, ping, close).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeFailed(Exception):
    """The server did not switch protocols (status and first line in the message)."""


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = False

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str, headers: dict[str, str] | None = None
    ) -> WebSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            writer.close()
            raise HandshakeFailed(status)
        return cls(reader, writer)

    async def recv(self) -> str | bytes | None:
        """The next message, or None once the server closed the connection."""
        parts: list[bytes] = []
        kind = OP_TEXT
        while True:
            try:
                fin, opcode, payload = await self._frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                self.closed = True
                return None
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.closed = True
                return None
            if opcode != OP_CONT:
                kind = opcode
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return data.decode() if kind == OP_TEXT else data

    async def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        size = b1 & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if b1 & 0x80 else b""
        payload = await self.reader.readexactly(size)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    async def close(self) -> None:
        if not self.closed:
            self._send(OP_CLOSE, struct.pack("!H", 1000))
            self.closed = True
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
