"""Just enough ELF to load the relay's BPF object: its program, its license and its map references.

clang emits one section per program (`SEC("xdp")`), a `license` section, the BTF map
definitions in `.maps`, and a `.rel<section>` table whose R_BPF_64_64 entries point at the
`ld_imm64` instructions that load a map's address. The loader creates the maps itself and
patches those instructions with the map fds (BPF_PSEUDO_MAP_FD), as libbpf does. Anything else
(global data, calls to non-inlined functions, CO-RE relocations) is refused with a clear error:
relay.bpf.c is written not to need it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

EM_BPF = 247
SHT_SYMTAB = 2
SHT_REL = 9
SHF_EXECINSTR = 0x4
STT_FUNC = 2
R_BPF_64_64 = 1
BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
BPF_PSEUDO_MAP_FD = 1


class ElfError(ValueError):
    """The object is not a BPF ELF this loader understands."""


@dataclass(frozen=True, slots=True)
class Program:
    section: str
    name: str
    insns: bytes
    map_relocations: tuple[tuple[int, str], ...]  # (instruction index, map symbol)

    def patched(self, map_fds: dict[str, int]) -> bytes:
        """The instructions with every map reference turned into `ld_imm64 rX, map_fd`."""
        code = bytearray(self.insns)
        for index, symbol in self.map_relocations:
            if symbol not in map_fds:
                raise ElfError(f"program {self.name} uses map {symbol!r}, which was not created")
            off = index * 8
            if code[off] != BPF_LD_IMM64:
                raise ElfError(f"relocation at instruction {index} is not an ld_imm64")
            code[off + 1] = (code[off + 1] & 0x0F) | (BPF_PSEUDO_MAP_FD << 4)  # src_reg
            struct.pack_into("<i", code, off + 4, map_fds[symbol])
        return bytes(code)


@dataclass(frozen=True, slots=True)
class BpfObject:
    license: str
    maps: frozenset[str]
    programs: dict[str, Program] = field(default_factory=dict)  # by section name


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int


def parse(data: bytes) -> BpfObject:
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian BPF objects are supported (-target bpfel)")
    (machine,) = struct.unpack_from("<H", data, 18)
    if machine != EM_BPF:
        raise ElfError(f"ELF machine {machine} is not BPF ({EM_BPF}): compile with -target bpf")
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)

    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = raw[shstrndx][4]

    def cstr(offset: int) -> str:
        end = data.index(b"\0", offset)
        return data[offset:end].decode()

    sections = [_Section(cstr(strtab_off + r[0]), r[1], r[2], r[4], r[5], r[6], r[7]) for r in raw]
    by_name = {s.name: i for i, s in enumerate(sections)}

    def body(s: _Section) -> bytes:
        return data[s.offset : s.offset + s.size]

    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None:
        raise ElfError("no symbol table")
    sym_names = sections[symtab.link]
    symbols: list[tuple[str, int, int, int]] = []  # name, type, section index, value
    for off in range(0, symtab.size, 24):
        st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from(
            "<IBBHQQ", data, symtab.offset + off
        )
        symbols.append((cstr(sym_names.offset + st_name), st_info & 0xF, st_shndx, st_value))

    maps_index = by_name.get(".maps")
    maps = frozenset(
        name for name, _t, shndx, _v in symbols if maps_index is not None and shndx == maps_index
    )

    license = "GPL"
    if "license" in by_name:
        license = body(sections[by_name["license"]]).split(b"\0", 1)[0].decode()

    programs: dict[str, Program] = {}
    for index, sec in enumerate(sections):
        if not sec.flags & SHF_EXECINSTR or sec.size == 0:
            continue
        func = next(
            (n for n, t, shndx, v in symbols if shndx == index and t == STT_FUNC and v == 0),
            sec.name,
        )
        relocs: list[tuple[int, str]] = []
        for rel in sections:
            if rel.type != SHT_REL or rel.info != index:
                continue
            for off in range(0, rel.size, 16):
                r_offset, r_info = struct.unpack_from("<QQ", data, rel.offset + off)
                sym_name, _t, shndx, _v = symbols[r_info >> 32]
                if (r_info & 0xFFFFFFFF) != R_BPF_64_64 or shndx != maps_index:
                    raise ElfError(
                        f"{sec.name}: unsupported relocation to {sym_name!r} (only map references "
                        "are: keep helpers inlined and use no global data)"
                    )
                relocs.append((r_offset // 8, sym_name))
        programs[sec.name] = Program(sec.name, func, body(sec), tuple(relocs))
    return BpfObject(license, maps, programs)
