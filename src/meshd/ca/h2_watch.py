"""Whether an HTTP/2 client has opened a request yet: the client's bytes are read frame header by frame
header (after the connection preface) until a HEADERS frame on a stream appears. The TLS front uses it to
close connections that complete the handshake but never send a request. Pure; constant memory."""

from __future__ import annotations

PREFACE_LEN = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
_FRAME_HEADER = 9
_HEADERS = 0x1


class RequestWatch:
    def __init__(self) -> None:
        self._skip = PREFACE_LEN  # bytes to pass over: the preface, then each frame's payload
        self._header = b""
        self.seen = False

    def feed(self, data: bytes) -> bool:
        """Consume client bytes; True once a request (HEADERS on a stream) has been seen."""
        i = 0
        while not self.seen and i < len(data):
            if self._skip:
                step = min(self._skip, len(data) - i)
                i += step
                self._skip -= step
                continue
            chunk = data[i : i + _FRAME_HEADER - len(self._header)]
            self._header += chunk
            i += len(chunk)
            if len(self._header) == _FRAME_HEADER:
                length = int.from_bytes(self._header[:3], "big")
                stream = int.from_bytes(self._header[5:9], "big") & 0x7FFFFFFF
                self.seen = self._header[3] == _HEADERS and stream != 0
                self._skip, self._header = length, b""
        return self.seen
