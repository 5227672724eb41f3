"""A minimal proxy-wasm (ABI 0.2.0) module, encoded by hand in WebAssembly's binary format (no toolchain).

What the module does, in Envoy's Wasm HTTP filter:
- `proxy_on_configure` keeps the plugin configuration (Istio's `pluginConfig`, as JSON) in the module's memory;
- `proxy_on_response_headers` adds the response header `header` whose value is that configuration (nothing
  when the configuration is empty);
- `proxy_on_request_headers` answers 403 (body `denied by wasm`) when the request's `:path` starts with
  `deny_prefix` (if one is given), without calling the upstream.

Exports: memory, proxy_abi_version_0_2_0, proxy_on_memory_allocate (a bump allocator reset at each request),
proxy_on_context_create, proxy_on_vm_start, proxy_on_configure, proxy_on_request_headers,
proxy_on_response_headers. Imports (module `env`): proxy_get_buffer_bytes, proxy_get_header_map_value,
proxy_add_header_map_value, proxy_send_local_response."""

from __future__ import annotations

import hashlib

from meshd.protowire import varint

I32 = 0x7F
_SCRATCH_PTR, _SCRATCH_SIZE = 16, 20
_PATH_AT, _HEADER_AT, _PREFIX_AT, _BODY_AT = 64, 96, 160, 224
_HEAP_START = 1024
_BODY = b"denied by wasm"
_PLUGIN_CONFIGURATION = 7  # proxy-wasm BufferType
_REQUEST_HEADERS, _RESPONSE_HEADERS = 0, 2  # proxy-wasm MapType


# WebAssembly's unsigned LEB128 is protobuf's varint
_uleb = varint


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _name(s: str) -> bytes:
    raw = s.encode()
    return _uleb(len(raw)) + raw


def _vec(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def _section(section_id: int, body: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(body)) + body


def _const(n: int) -> bytes:
    return b"\x41" + _sleb(n)


def _load(offset: int = 0) -> bytes:  # i32.load align=2
    return b"\x28\x02" + _uleb(offset)


def _load8(offset: int) -> bytes:  # i32.load8_u
    return b"\x2d\x00" + _uleb(offset)


LOCAL_GET, GLOBAL_GET, GLOBAL_SET, CALL, DROP, END = 0x20, 0x23, 0x24, 0x10, 0x1A, 0x0B
IF_EMPTY = b"\x04\x40"
RETURN = b"\x0f"


def _op(code: int, arg: int) -> bytes:
    return bytes([code]) + _uleb(arg)


def common_bodies(*, get_buffer: int, heap: int, config_ptr: int, config_size: int, mark: int) -> tuple[bytes, ...]:
    """The function bodies every test module shares: proxy_on_memory_allocate (a bump allocator over the global
    `heap`, 8-byte aligned), proxy_on_context_create, proxy_on_vm_start, and proxy_on_configure (the plugin
    configuration read into `config_ptr` / `config_size` through the import `get_buffer`; `mark` is the heap
    after it, reset per stream)."""
    allocate = (
        _op(GLOBAL_GET, heap)
        + _op(GLOBAL_GET, heap)
        + _op(LOCAL_GET, 0)
        + b"\x6a"  # i32.add
        + _const(7)
        + b"\x6a"
        + _const(-8)
        + b"\x71"  # i32.and
        + _op(GLOBAL_SET, heap)
        + bytes([END])
    )
    context_create = bytes([END])
    vm_start = _const(1) + bytes([END])
    configure = (
        _op(LOCAL_GET, 1)
        + IF_EMPTY
        + _const(_PLUGIN_CONFIGURATION)
        + _const(0)
        + _op(LOCAL_GET, 1)
        + _const(_SCRATCH_PTR)
        + _const(_SCRATCH_SIZE)
        + _op(CALL, get_buffer)
        + bytes([DROP])
        + _const(0)
        + _load(_SCRATCH_PTR)
        + _op(GLOBAL_SET, config_ptr)
        + _const(0)
        + _load(_SCRATCH_SIZE)
        + _op(GLOBAL_SET, config_size)
        + bytes([END])
        + _op(GLOBAL_GET, heap)
        + _op(GLOBAL_SET, mark)
        + _const(1)
        + bytes([END])
    )
    return allocate, context_create, vm_start, configure


def build_module(*, header: str = "x-wasm-plugin", deny_prefix: str = "") -> bytes:
    """The module's bytes (see the module docstring)."""
    types = [
        bytes([0x60]) + _vec([bytes([I32])] * 5) + _vec([bytes([I32])]),  # 0: (i32 x5) -> i32
        bytes([0x60]) + _vec([bytes([I32])] * 8) + _vec([bytes([I32])]),  # 1: (i32 x8) -> i32
        bytes([0x60]) + _vec([]) + _vec([]),  # 2: () -> ()
        bytes([0x60]) + _vec([bytes([I32])]) + _vec([bytes([I32])]),  # 3: (i32) -> i32
        bytes([0x60]) + _vec([bytes([I32])] * 2) + _vec([]),  # 4: (i32 i32) -> ()
        bytes([0x60]) + _vec([bytes([I32])] * 2) + _vec([bytes([I32])]),  # 5: (i32 i32) -> i32
        bytes([0x60]) + _vec([bytes([I32])] * 3) + _vec([bytes([I32])]),  # 6: (i32 i32 i32) -> i32
    ]
    imports = [
        _name("env") + _name("proxy_get_buffer_bytes") + b"\x00" + _uleb(0),  # func 0
        _name("env") + _name("proxy_get_header_map_value") + b"\x00" + _uleb(0),  # func 1
        _name("env") + _name("proxy_add_header_map_value") + b"\x00" + _uleb(0),  # func 2
        _name("env") + _name("proxy_send_local_response") + b"\x00" + _uleb(1),  # func 3
    ]
    get_buffer, get_header, add_header, local_response = 0, 1, 2, 3
    heap, config_ptr, config_size, mark = 0, 1, 2, 3  # globals
    header_raw, prefix_raw = header.encode(), deny_prefix.encode()

    abi_version = bytes([END])
    allocate, context_create, vm_start, configure = common_bodies(
        get_buffer=get_buffer, heap=heap, config_ptr=config_ptr, config_size=config_size, mark=mark
    )
    request = _op(GLOBAL_GET, mark) + _op(GLOBAL_SET, heap)
    if prefix_raw:
        same = _const(1)
        for k, byte in enumerate(prefix_raw):
            same += _const(0) + _load(_SCRATCH_PTR) + _load8(k) + _const(byte) + b"\x46" + b"\x71"
        request += (
            _const(0)
            + _const(_SCRATCH_SIZE)
            + b"\x36\x02\x00"  # i32.store: size 0 unless the host writes it
            + _const(_REQUEST_HEADERS)
            + _const(_PATH_AT)
            + _const(5)
            + _const(_SCRATCH_PTR)
            + _const(_SCRATCH_SIZE)
            + _op(CALL, get_header)
            + bytes([DROP])
            + _const(0)
            + _load(_SCRATCH_SIZE)
            + _const(len(prefix_raw))
            + b"\x4f"  # i32.ge_u
            + IF_EMPTY
            + same
            + IF_EMPTY
            + _const(403)
            + _const(0)
            + _const(0)
            + _const(_BODY_AT)
            + _const(len(_BODY))
            + _const(0)
            + _const(0)
            + _const(-1)
            + _op(CALL, local_response)
            + bytes([DROP])
            + _const(1)
            + RETURN
            + bytes([END])
            + bytes([END])
        )
    request += _const(0) + bytes([END])
    response = (
        _op(GLOBAL_GET, config_size)
        + IF_EMPTY
        + _const(_RESPONSE_HEADERS)
        + _const(_HEADER_AT)
        + _const(len(header_raw))
        + _op(GLOBAL_GET, config_ptr)
        + _op(GLOBAL_GET, config_size)
        + _op(CALL, add_header)
        + bytes([DROP])
        + bytes([END])
        + _const(0)
        + bytes([END])
    )
    bodies = [abi_version, allocate, context_create, vm_start, configure, request, response]
    func_types = [2, 3, 4, 5, 5, 6, 6]
    exports = [
        ("proxy_abi_version_0_2_0", 4),
        ("proxy_on_memory_allocate", 5),
        ("proxy_on_context_create", 6),
        ("proxy_on_vm_start", 7),
        ("proxy_on_configure", 8),
        ("proxy_on_request_headers", 9),
        ("proxy_on_response_headers", 10),
    ]
    globals_ = [bytes([I32, 0x01]) + _const(_HEAP_START) + bytes([END])] + [
        bytes([I32, 0x01]) + _const(0) + bytes([END])
    ] * 3
    data = [
        (_PATH_AT, b":path"),
        (_HEADER_AT, header_raw),
        (_PREFIX_AT, prefix_raw),
        (_BODY_AT, _BODY),
    ]
    assert len(header_raw) <= _PREFIX_AT - _HEADER_AT and len(prefix_raw) <= _BODY_AT - _PREFIX_AT
    return (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, _vec(types))
        + _section(2, _vec(imports))
        + _section(3, _vec([_uleb(t) for t in func_types]))
        + _section(5, _vec([b"\x00" + _uleb(16)]))  # 16 pages (1 MiB), no maximum
        + _section(6, _vec(globals_))
        + _section(
            7,
            _vec([_name("memory") + b"\x02" + _uleb(0)] + [_name(n) + b"\x00" + _uleb(i) for n, i in exports]),
        )
        + _section(10, _vec([_uleb(len(b"\x00" + body)) + b"\x00" + body for body in bodies]))
        + _section(11, _vec([b"\x00" + _const(at) + bytes([END]) + _uleb(len(raw)) + raw for at, raw in data if raw]))
    )


def sha256(module: bytes) -> str:
    return hashlib.sha256(module).hexdigest()
