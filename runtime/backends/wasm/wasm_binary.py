"""Reading and rewriting the sections of a core WebAssembly module, just far enough for
snapshots (``runtime.backends.wasm.snapshot``): the memory, global, export, start, data count and
data sections. Code, types and every other section pass through byte for byte.

The format is the WebAssembly core specification's binary format (section 5,
"Binary Format"): a module is the magic ``\\0asm``, version 1, then sections
``id:u8 size:u32 body``; integers are LEB128. Anything this module does not understand
(memory64, shared memories, imported or several memories, mutable globals of reference
or vector type, passive data segments, non-constant offsets) raises
:class:`SnapshotUnsupported` naming it, never a silently wrong module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from runtime.errors import SnapshotUnsupported

__all__ = [
    "DataSegment",
    "GlobalDef",
    "ModuleLayout",
    "Section",
    "encode_global_init",
    "parse_module",
    "with_exports",
    "write_snapshot_module",
]

MAGIC = b"\0asm\1\0\0\0"
SEC_IMPORT, SEC_MEMORY, SEC_GLOBAL, SEC_EXPORT, SEC_START = 2, 5, 6, 7, 8
SEC_DATA, SEC_DATA_COUNT = 11, 12
KIND_FUNC, KIND_TABLE, KIND_MEMORY, KIND_GLOBAL, KIND_TAG = 0, 1, 2, 3, 4
# Value types a snapshot can carry in a global's initialiser.
I32, I64, F32, F64, V128 = 0x7F, 0x7E, 0x7D, 0x7C, 0x7B
NUMERIC = {I32: "i32", I64: "i64", F32: "f32", F64: "f64"}
END = 0x0B


# -- LEB128 -------------------------------------------------------------------------------


def read_uleb(buf: bytes, pos: int) -> tuple[int, int]:
    return _read_leb(buf, pos, signed=False)


def read_sleb(buf: bytes, pos: int) -> tuple[int, int]:
    return _read_leb(buf, pos, signed=True)


def _read_leb(buf: bytes, pos: int, *, signed: bool) -> tuple[int, int]:
    """The LEB128 integer at ``pos``, and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise SnapshotUnsupported("truncated or oversized LEB128 integer in the module")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if signed and byte & 0x40:
                result -= 1 << shift
            return result, pos


def uleb(value: int) -> bytes:
    if value < 0:
        raise ValueError("uleb of a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _name(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = read_uleb(buf, pos)
    return buf[pos : pos + n].decode("utf-8"), pos + n


def _vec(items: list[bytes]) -> bytes:
    return uleb(len(items)) + b"".join(items)


# -- the module's layout --------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    id: int
    body: bytes

    def encode(self) -> bytes:
        return bytes([self.id]) + uleb(len(self.body)) + self.body


@dataclass(frozen=True)
class GlobalDef:
    """A global the module defines (not imports); ``index`` is in the global index space."""

    index: int
    valtype: int
    mutable: bool
    init: bytes  # the constant expression, ``end`` included


@dataclass(frozen=True)
class DataSegment:
    """An active data segment of memory 0 at a constant offset."""

    offset: int
    data: bytes


@dataclass(frozen=True)
class ModuleLayout:
    sections: list[Section]
    imported_globals: int
    globals: list[GlobalDef]
    memory_limits: tuple[int, int | None] | None  # (min, max) pages of the defined memory
    exports: list[tuple[str, int, int]]  # (name, kind, index)
    data_segments: int


def parse_module(wasm: bytes) -> ModuleLayout:
    """The sections of ``wasm`` and what a snapshot needs to know of them."""
    if wasm[:8] != MAGIC:
        raise SnapshotUnsupported("not a core WebAssembly module (bad magic or version)")
    sections: list[Section] = []
    pos = 8
    while pos < len(wasm):
        sid = wasm[pos]
        size, pos = read_uleb(wasm, pos + 1)
        if pos + size > len(wasm):
            raise SnapshotUnsupported("a section runs past the end of the module")
        sections.append(Section(sid, wasm[pos : pos + size]))
        pos += size
    imported_globals = 0
    globals_: list[GlobalDef] = []
    memory: tuple[int, int | None] | None = None
    exports: list[tuple[str, int, int]] = []
    data_segments = 0
    for sec in sections:
        if sec.id == SEC_IMPORT:
            imported_globals = _imports(sec.body)
        elif sec.id == SEC_MEMORY:
            memory = _memory(sec.body)
        elif sec.id == SEC_GLOBAL:
            globals_ = _globals(sec.body, imported_globals)
        elif sec.id == SEC_EXPORT:
            exports = _exports(sec.body)
        elif sec.id == SEC_DATA:
            data_segments = _check_data(sec.body)
    return ModuleLayout(sections, imported_globals, globals_, memory, exports, data_segments)


def _limits(buf: bytes, pos: int, what: str) -> tuple[int, int | None, int]:
    flags = buf[pos]
    pos += 1
    if flags not in (0, 1):
        raise SnapshotUnsupported(f"{what} with limits flags {flags:#x} (shared or 64-bit)")
    lo, pos = read_uleb(buf, pos)
    hi = None
    if flags == 1:
        hi, pos = read_uleb(buf, pos)
    return lo, hi, pos


def _imports(body: bytes) -> int:
    count, pos = read_uleb(body, 0)
    globals_ = 0
    for _ in range(count):
        module, pos = _name(body, pos)
        field, pos = _name(body, pos)
        kind = body[pos]
        pos += 1
        if kind == KIND_FUNC:
            _, pos = read_uleb(body, pos)
        elif kind == KIND_TABLE:
            pos += 1  # reference type
            _, _, pos = _limits(body, pos, "an imported table")
        elif kind == KIND_MEMORY:
            raise SnapshotUnsupported(f"the module imports its memory ({module}::{field})")
        elif kind == KIND_GLOBAL:
            mutable = body[pos + 1]
            if mutable:
                raise SnapshotUnsupported(
                    f"the module imports a mutable global ({module}::{field}): its state "
                    "lives outside the instance"
                )
            pos += 2
            globals_ += 1
        elif kind == KIND_TAG:
            _, pos = read_uleb(body, pos + 1)
        else:
            raise SnapshotUnsupported(f"unknown import kind {kind}")
    return globals_


def _memory(body: bytes) -> tuple[int, int | None]:
    count, pos = read_uleb(body, 0)
    if count != 1:
        raise SnapshotUnsupported(f"the module defines {count} memories (one is supported)")
    lo, hi, _ = _limits(body, pos, "a memory")
    return lo, hi


def _const_expr_end(buf: bytes, pos: int) -> int:
    """Where the constant expression starting at ``pos`` ends (after its ``end``)."""
    while True:
        op = buf[pos]
        pos += 1
        if op == END:
            return pos
        if op in (0x41, 0x42):  # i32.const, i64.const
            _, pos = read_sleb(buf, pos)
        elif op == 0x43:
            pos += 4
        elif op == 0x44:
            pos += 8
        elif op in (0x23, 0xD2):  # global.get, ref.func
            _, pos = read_uleb(buf, pos)
        elif op == 0xD0:  # ref.null heaptype
            _, pos = read_sleb(buf, pos)
        elif op == 0xFD:  # v128.const
            sub, pos = read_uleb(buf, pos)
            if sub != 12:
                raise SnapshotUnsupported(f"vector instruction {sub} in a constant expression")
            pos += 16
        elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended constant arithmetic
            continue
        else:
            raise SnapshotUnsupported(f"instruction {op:#x} in a constant expression")


def _globals(body: bytes, first: int) -> list[GlobalDef]:
    count, pos = read_uleb(body, 0)
    out = []
    for i in range(count):
        valtype, mutable = body[pos], body[pos + 1]
        start = pos + 2
        pos = _const_expr_end(body, start)
        out.append(GlobalDef(first + i, valtype, bool(mutable), body[start:pos]))
    return out


def _exports(body: bytes) -> list[tuple[str, int, int]]:
    count, pos = read_uleb(body, 0)
    out = []
    for _ in range(count):
        name, pos = _name(body, pos)
        kind = body[pos]
        index, pos = read_uleb(body, pos + 1)
        out.append((name, kind, index))
    return out


def _check_data(body: bytes) -> int:
    """The number of segments; refuses passive ones (``memory.init`` could copy them
    again after the snapshot, from data the snapshot no longer has)."""
    count, pos = read_uleb(body, 0)
    for _ in range(count):
        flags, pos = read_uleb(body, pos)
        if flags == 1:
            raise SnapshotUnsupported("the module has passive data segments")
        if flags == 2:
            _, pos = read_uleb(body, pos)
        elif flags != 0:
            raise SnapshotUnsupported(f"data segment flags {flags}")
        pos = _const_expr_end(body, pos)
        size, pos = read_uleb(body, pos)
        pos += size
    return count


# -- writing ----------------------------------------------------------------------------------


def _export_section(exports: list[tuple[str, int, int]]) -> Section:
    items = [uleb(len(n.encode())) + n.encode() + bytes([k]) + uleb(i) for n, k, i in exports]
    return Section(SEC_EXPORT, _vec(items))


def _replace(sections: list[Section], new: Section) -> list[Section]:
    """``sections`` with ``new`` in place of the section of its id, or appended
    (:func:`_order` then puts it where the spec requires)."""
    for i, s in enumerate(sections):
        if s.id == new.id:
            return [*sections[:i], new, *sections[i + 1 :]]
    return [*sections, new]


def encode_module(sections: list[Section]) -> bytes:
    return MAGIC + b"".join(s.encode() for s in sections)


def with_exports(layout: ModuleLayout, extra: list[tuple[str, int, int]]) -> bytes:
    """The module with ``extra`` exports added (names must be new)."""
    taken = {n for n, _, _ in layout.exports}
    clash = [n for n, _, _ in extra if n in taken]
    if clash:
        raise SnapshotUnsupported(f"the module already exports {clash[0]!r}")
    section = _export_section([*layout.exports, *extra])
    return encode_module(_order(_replace(layout.sections, section)))


def encode_global_init(valtype: int, value: int | float) -> bytes:
    """The constant expression that makes a global of ``valtype`` start at ``value``."""
    if valtype == I32:
        v = int(value) & 0xFFFFFFFF
        return b"\x41" + sleb(v - (1 << 32) if v >= 1 << 31 else v) + bytes([END])
    if valtype == I64:
        v = int(value) & 0xFFFFFFFFFFFFFFFF
        return b"\x42" + sleb(v - (1 << 64) if v >= 1 << 63 else v) + bytes([END])
    if valtype == F32:
        return b"\x43" + struct.pack("<f", value) + bytes([END])
    if valtype == F64:
        return b"\x44" + struct.pack("<d", value) + bytes([END])
    raise SnapshotUnsupported(f"a mutable global of type {valtype:#x} cannot be snapshotted")


def write_snapshot_module(
    layout: ModuleLayout,
    *,
    pages: int,
    globals_: dict[int, bytes],
    segments: list[DataSegment],
    drop_exports: set[str],
) -> bytes:
    """The module of ``layout`` starting from a captured state: memory 0 at least
    ``pages`` pages, the globals of ``globals_`` (index -> encoded init) at those values,
    the data section replaced by ``segments``, the start function and ``drop_exports``
    removed. The code is unchanged."""
    if layout.memory_limits is None:
        raise SnapshotUnsupported("the module defines no memory")
    sections = [s for s in layout.sections if s.id != SEC_START]
    lo, hi = layout.memory_limits
    lo = max(lo, pages)
    limits = b"\x00" + uleb(lo) if hi is None else b"\x01" + uleb(lo) + uleb(max(hi, lo))
    sections = _replace(sections, Section(SEC_MEMORY, _vec([limits])))
    if layout.globals:
        items = [
            bytes([g.valtype, int(g.mutable)]) + globals_.get(g.index, g.init)
            for g in layout.globals
        ]
        sections = _replace(sections, Section(SEC_GLOBAL, _vec(items)))
    exports = [e for e in layout.exports if e[0] not in drop_exports]
    sections = _replace(sections, _export_section(exports))
    # Code may name old segments (data.drop of an active one is a no-op once it has been
    # applied); empty segments keep every old index valid.
    encoded = [
        b"\x00\x41" + sleb(_as_i32(seg.offset)) + bytes([END]) + uleb(len(seg.data)) + seg.data
        for seg in segments
    ]
    while len(encoded) < layout.data_segments:
        encoded.append(b"\x00\x41\x00\x0b\x00")
    sections = _replace(sections, Section(SEC_DATA, _vec(encoded)))
    if any(s.id == SEC_DATA_COUNT for s in sections):
        sections = _replace(sections, Section(SEC_DATA_COUNT, uleb(len(encoded))))
    return encode_module(_order(sections))


def _as_i32(offset: int) -> int:
    return offset - (1 << 32) if offset >= 1 << 31 else offset


# The order of non-custom sections the spec prescribes (data count sits before code).
_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 13: 5, 5: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}


def _order(sections: list[Section]) -> list[Section]:
    """Known sections in the spec's order; custom sections keep their place after the
    known section they followed."""
    out: list[Section] = []
    rank = 0
    keyed: list[tuple[int, int, Section]] = []
    for s in sections:
        if s.id != 0:
            rank = _ORDER.get(s.id, 99)
        keyed.append((rank, len(keyed), s))
    for _, _, s in sorted(keyed, key=lambda t: (t[0], t[1])):
        out.append(s)
    return out
