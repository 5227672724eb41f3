"""A minimal proxy-wasm (ABI 0.2.0) module for Envoy's Wasm **network** filter, encoded by hand in
WebAssembly's binary format (the encoding helpers of tests/e2e/wasm_module.py; no toolchain).

What the module does on a connection (a WasmPlugin of `type: NETWORK`):
- `proxy_on_configure` keeps the plugin configuration (Istio's `pluginConfig`, as JSON) in the module's memory;
- `proxy_on_downstream_data` closes the connection (proxy_close_stream, downstream) when the client's data
  starts with `deny_prefix` (if one is given), so that data never reaches the upstream;
- `proxy_on_upstream_data` puts the configuration in front of the first data the upstream sends back on a
  connection (nothing when the configuration is empty): a TCP echo answers `<config>raw:...`. "First" is
  tracked by the last connection (context id) prepended to: enough for connections one at a time.

Exports: memory, proxy_abi_version_0_2_0, proxy_on_memory_allocate (a bump allocator reset at each callback),
proxy_on_context_create, proxy_on_vm_start, proxy_on_configure, proxy_on_new_connection,
proxy_on_downstream_data, proxy_on_upstream_data. Imports (module `env`): proxy_get_buffer_bytes,
proxy_set_buffer_bytes, proxy_close_stream."""

from __future__ import annotations

from tests.e2e.wasm_module import (
    CALL,
    DROP,
    END,
    GLOBAL_GET,
    GLOBAL_SET,
    I32,
    IF_EMPTY,
    LOCAL_GET,
    RETURN,
    _const,
    _load,
    _load8,
    _name,
    _op,
    _section,
    _uleb,
    _vec,
    common_bodies,
)

_SCRATCH_PTR, _SCRATCH_SIZE = 16, 20
_HEAP_START = 1024
_PLUGIN_CONFIGURATION, _DOWNSTREAM_DATA, _UPSTREAM_DATA = 7, 2, 3  # proxy-wasm BufferType
_STREAM_DOWNSTREAM = 2  # proxy-wasm StreamType
_PAUSE = 1  # proxy-wasm Action (0: continue)


def build_network_module(*, deny_prefix: str = "") -> bytes:
    """The module's bytes (see the module docstring)."""
    types = [
        bytes([0x60]) + _vec([bytes([I32])] * 5) + _vec([bytes([I32])]),  # 0: (i32 x5) -> i32
        bytes([0x60]) + _vec([bytes([I32])]) + _vec([bytes([I32])]),  # 1: (i32) -> i32
        bytes([0x60]) + _vec([]) + _vec([]),  # 2: () -> ()
        bytes([0x60]) + _vec([bytes([I32])] * 2) + _vec([]),  # 3: (i32 i32) -> ()
        bytes([0x60]) + _vec([bytes([I32])] * 2) + _vec([bytes([I32])]),  # 4: (i32 i32) -> i32
        bytes([0x60]) + _vec([bytes([I32])] * 3) + _vec([bytes([I32])]),  # 5: (i32 i32 i32) -> i32
    ]
    imports = [
        _name("env") + _name("proxy_get_buffer_bytes") + b"\x00" + _uleb(0),  # func 0
        _name("env") + _name("proxy_set_buffer_bytes") + b"\x00" + _uleb(0),  # func 1
        _name("env") + _name("proxy_close_stream") + b"\x00" + _uleb(1),  # func 2
    ]
    get_buffer, set_buffer, close_stream = 0, 1, 2
    heap, config_ptr, config_size, mark, last_context = 0, 1, 2, 3, 4  # globals
    prefix_raw = deny_prefix.encode()

    abi_version = bytes([END])
    allocate, context_create, vm_start, configure = common_bodies(
        get_buffer=get_buffer, heap=heap, config_ptr=config_ptr, config_size=config_size, mark=mark
    )
    new_connection = _const(0) + bytes([END])
    downstream = _op(GLOBAL_GET, mark) + _op(GLOBAL_SET, heap)
    if prefix_raw:
        same = _const(1)
        for k, byte in enumerate(prefix_raw):
            same += _const(0) + _load(_SCRATCH_PTR) + _load8(k) + _const(byte) + b"\x46" + b"\x71"  # eq, and
        downstream += (
            _const(0)
            + _const(_SCRATCH_SIZE)
            + b"\x36\x02\x00"  # i32.store: size 0 unless the host writes it
            + _const(_DOWNSTREAM_DATA)
            + _const(0)
            + _const(len(prefix_raw))
            + _const(_SCRATCH_PTR)
            + _const(_SCRATCH_SIZE)
            + _op(CALL, get_buffer)
            + bytes([DROP])
            + _const(0)
            + _load(_SCRATCH_SIZE)
            + _const(len(prefix_raw))
            + b"\x4f"  # i32.ge_u
            + IF_EMPTY
            + same
            + IF_EMPTY
            + _const(_STREAM_DOWNSTREAM)
            + _op(CALL, close_stream)
            + bytes([DROP])
            + _const(_PAUSE)
            + RETURN
            + bytes([END])
            + bytes([END])
        )
    downstream += _const(0) + bytes([END])
    upstream = (
        _op(GLOBAL_GET, mark)
        + _op(GLOBAL_SET, heap)
        + _op(GLOBAL_GET, config_size)
        + IF_EMPTY
        + _op(LOCAL_GET, 0)
        + _op(GLOBAL_GET, last_context)
        + b"\x47"  # i32.ne
        + IF_EMPTY
        + _op(LOCAL_GET, 0)
        + _op(GLOBAL_SET, last_context)
        + _const(_UPSTREAM_DATA)
        + _const(0)
        + _const(0)  # start 0, size 0: insert in front
        + _op(GLOBAL_GET, config_ptr)
        + _op(GLOBAL_GET, config_size)
        + _op(CALL, set_buffer)
        + bytes([DROP])
        + bytes([END])
        + bytes([END])
        + _const(0)
        + bytes([END])
    )
    bodies = [abi_version, allocate, context_create, vm_start, configure, new_connection, downstream, upstream]
    func_types = [2, 1, 3, 4, 4, 1, 5, 5]
    first = len(imports)
    exports = [
        ("proxy_abi_version_0_2_0", first),
        ("proxy_on_memory_allocate", first + 1),
        ("proxy_on_context_create", first + 2),
        ("proxy_on_vm_start", first + 3),
        ("proxy_on_configure", first + 4),
        ("proxy_on_new_connection", first + 5),
        ("proxy_on_downstream_data", first + 6),
        ("proxy_on_upstream_data", first + 7),
    ]
    globals_ = [bytes([I32, 0x01]) + _const(_HEAP_START) + bytes([END])] + [
        bytes([I32, 0x01]) + _const(0) + bytes([END])
    ] * 4
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
    )
