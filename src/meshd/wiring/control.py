"""The control channel between `meshd serve --workers N` and its worker processes: one Unix stream
socket per worker (in a directory only meshd's user can open), carrying length-prefixed pickled tuples.

Both ends are the same meshd build started by the same user: pickle carries the store's resources
as they are (pydantic models, dataclasses), with no schema of its own to keep in step.

Main -> worker: `("start", settings_json, index, SecureMaterial | None)` first, then `("sync", Sync)` (what
changed in the main store, the mesh config, injected test resources), `("ask", id, name, arg)` (a debug or
metrics question) and `("secure", SecureMaterial)` (meshd's serving certificate, renewed).
Worker -> main: `("ready",)` once its first generation is published, `("rejected", [(Proxy, Rejected)])`
when what its proxies NACKed changes, `("reply", id, data)` answering an ask, `("ask", id, name, arg)`
(Istio's debug types over every process; a CSR or bearer token on its secure port)."""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshd.api.mesh import MeshConfig
from meshd.api.meta import Resource, ResourceKey
from meshd.xds.resource import XdsResource

_HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 30


@dataclass(frozen=True)
class Sync:
    """What a worker applies to its replica of the main store, in one step."""

    changes: Mapping[ResourceKey, Resource | None]  # a key's winning resource now, None: gone
    mesh: MeshConfig | None  # the mesh config generation reads
    mesh_changed: bool
    loaded: bool  # the main store's first full load is in
    extra: Mapping[str, Sequence[XdsResource]] | None  # test hook resources (None: unchanged)


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message; raises asyncio.IncompleteReadError at the end of the stream."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"control frame of {size} bytes")
    return pickle.loads(await reader.readexactly(size))


def frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    writer.write(frame(message))
    await writer.drain()
