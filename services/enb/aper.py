"""Just enough aligned PER (ITU-T X.691) by hand for the S1AP codec's fast path.

S1AP wraps every message the same way: the S1AP-PDU choice, the procedure code and criticality,
an open type holding a SEQUENCE whose only root component is a ProtocolIE-Container, and in it
one ProtocolIE-Field (id, criticality, open type) per IE; the E-RAB lists inside are
SEQUENCE (SIZE (1..256)) OF ProtocolIE-SingleContainer. Those layers are whole octets, so they
are taken apart and put together here with byte operations (`split_pdu` / `pdu`,
`split_list` / `single_list`), and the few fields that vary per message (UE S1AP ids, GTP
TEIDs) are read and written by hand. `BitReader` reads the bit-packed insides of an E-RAB item.

Everything here is pure and strict: a shape it does not expect (an extension bit set, a
fragmented length, trailing octets) raises `AperError`, and the caller then hands the PDU to
pycrate, which decodes (and reports errors in) the general case. Which layouts these functions
produce is checked against pycrate's own encoding in tests/enb/test_s1ap_fast.py.
"""

from __future__ import annotations

from collections.abc import Iterable

Field = tuple[int, int, bytes]  # (IE id, criticality index, open type contents)


class AperError(ValueError):
    """Bytes outside the shapes the fast path handles (not necessarily invalid APER)."""


def length(n: int) -> bytes:
    """An unconstrained length determinant (X.691 11.9.3.6-7); fragmented lengths (16K and
    more) are left to pycrate."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((0x80 | n >> 8, n & 0xFF))
    raise AperError(f"length {n} needs fragmentation")


def read_length(data: bytes, pos: int) -> tuple[int, int]:
    """(length, position after it) of an unconstrained length determinant at octet `pos`."""
    if pos >= len(data):
        raise AperError("truncated length determinant")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    if first < 0xC0 and pos + 1 < len(data):
        return (first & 0x3F) << 8 | data[pos + 1], pos + 2
    raise AperError("fragmented or truncated length determinant")


def open_type(contents: bytes) -> bytes:
    return length(len(contents)) + contents


def ue_id(value: int) -> bytes:
    """The complete encoding of an INTEGER (0..2^24-1) or (0..2^32-1) (ENB- / MME-UE-S1AP-ID):
    the octet count minus one in two bits, then the value in that many octets, aligned."""
    size = (value.bit_length() + 7) >> 3 or 1
    return bytes(((size - 1) << 6,)) + value.to_bytes(size, "big")


def read_ue_id(contents: bytes, max_octets: int) -> int:
    """Inverse of `ue_id` for an id of at most `max_octets` octets."""
    if not contents or contents[0] & 0x3F:
        raise AperError("bad UE id encoding")
    size = (contents[0] >> 6) + 1
    if size > max_octets or len(contents) != size + 1:
        raise AperError("bad UE id length")
    return int.from_bytes(contents[1:], "big")


def field(ie_id: int, criticality: int, contents: bytes) -> bytes:
    """One ProtocolIE-Field: id (two octets), criticality (two bits, padded), open type."""
    return ie_id.to_bytes(2, "big") + bytes((criticality << 6,)) + open_type(contents)


def _read_fields(data: bytes, pos: int, count: int) -> list[Field]:
    fields = []
    end = len(data)
    for _ in range(count):
        if pos + 3 > end or data[pos + 2] & 0x3F or data[pos + 2] >= 0xC0:
            raise AperError("bad protocol IE field header")
        ie_id = data[pos] << 8 | data[pos + 1]
        crit = data[pos + 2] >> 6
        size, pos = read_length(data, pos + 3)
        if pos + size > end:
            raise AperError("truncated protocol IE field")
        fields.append((ie_id, crit, data[pos : pos + size]))
        pos += size
    if pos != end:
        raise AperError("octets after the last protocol IE field")
    return fields


def pdu(type_index: int, procedure_code: int, criticality: int, fields: Iterable[bytes]) -> bytes:
    """An S1AP-PDU: the choice index (`MessageType` order), the procedure code and
    criticality, and the message SEQUENCE (no extension) with its ProtocolIE-Container."""
    items = list(fields)
    body = b"\x00" + len(items).to_bytes(2, "big") + b"".join(items)
    return bytes((type_index << 5, procedure_code, criticality << 6)) + open_type(body)


def split_pdu(data: bytes) -> tuple[int, int, int, list[Field]]:
    """Inverse of `pdu`: (choice index, procedure code, criticality index, IE fields)."""
    if len(data) < 7 or data[0] & 0x9F or data[0] >= 0x60 or data[2] & 0x3F or data[2] >= 0xC0:
        raise AperError("not a plain S1AP-PDU header")
    size, pos = read_length(data, 3)
    if pos + size != len(data) or size < 3 or data[pos] != 0:
        raise AperError("message is not one extension-free SEQUENCE")
    count = data[pos + 1] << 8 | data[pos + 2]
    return data[0] >> 5, data[1], data[2] >> 6, _read_fields(data, pos + 3, count)


def single_list(fields: Iterable[bytes]) -> bytes:
    """SEQUENCE (SIZE (1..256)) OF ProtocolIE-SingleContainer from `field()` octets."""
    items = list(fields)
    if not 1 <= len(items) <= 256:
        raise AperError(f"{len(items)} items in a list of 1..256")
    return bytes((len(items) - 1,)) + b"".join(items)


def split_list(contents: bytes) -> list[Field]:
    """Inverse of `single_list`."""
    if not contents:
        raise AperError("empty list")
    return _read_fields(contents, 1, contents[0] + 1)


class BitReader:
    """Reads a complete APER encoding bit by bit (X.691 bit-fields, alignment, octets)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0  # in bits

    def bits(self, n: int) -> int:
        end = self.pos + n
        if end > len(self.data) * 8:
            raise AperError("truncated bit-field")
        first, last = self.pos >> 3, (end + 7) >> 3
        chunk = int.from_bytes(self.data[first:last], "big")
        value = (chunk >> ((last << 3) - end)) & ((1 << n) - 1)
        self.pos = end
        return value

    def zero(self, n: int = 1) -> None:
        """n bits that must be 0 here (an extension bit or a presence bitmap)."""
        if self.bits(n):
            raise AperError("extension or optional component present")

    def align(self) -> None:
        self.pos = (self.pos + 7) & ~7

    def octets(self, n: int) -> bytes:
        self.align()
        start = self.pos >> 3
        if start + n > len(self.data):
            raise AperError("truncated octets")
        self.pos += n << 3
        return self.data[start : start + n]

    def length(self) -> int:
        self.align()
        n, pos = read_length(self.data, self.pos >> 3)
        self.pos = pos << 3
        return n

    def big_uint(self, count_bits: int) -> int:
        """A constrained whole number of range over 64K: octet count minus one in
        `count_bits` bits, then the octets, aligned."""
        return int.from_bytes(self.octets(self.bits(count_bits) + 1), "big")

    def at_end(self) -> None:
        """The rest must be padding: the encoding ends in the current octet."""
        if (self.pos + 7) >> 3 != len(self.data):
            raise AperError("octets after the value")
