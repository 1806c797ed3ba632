"""A data set received over the network, as bytes: its header, its pixel data's length, and the
DICOM Part 10 file it is kept as (PS3.10: preamble, "DICM", file meta group, the data set's bytes
unchanged).

No pixel data is decoded or copied here: the header is read up to (7FE0,0010), and the pixel
data element's length is taken from its own header and from the bytes that follow it.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any, BinaryIO, NamedTuple

from queues.errors import CarinaError

IMPLICIT_LITTLE, EXPLICIT_LITTLE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
DEFLATED, EXPLICIT_BIG = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, PIXEL_DATA))  # float, double float and pixel data
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))


class UnreadableDataSet(CarinaError):
    """A received data set whose elements cannot be parsed."""


class Header(NamedTuple):
    """A data set's elements before its pixel data, and the native pixel data's bytes present:
    None where there is none, or where it is encapsulated or deflated (not measured here)."""

    dataset: Any  # pydicom's Dataset (imported only where a data set is read)
    pixel_bytes: int | None


def read_header(stream: BinaryIO, size: int, transfer_syntax: str) -> Header:
    """Read the header of a data set of ``size`` bytes encoded in ``transfer_syntax`` (any the
    standard defines: those other than implicit little, explicit big and deflated are explicit
    little endian with encapsulated pixel data). ``stream`` is positioned at the data set's first
    byte; only the elements before the pixel data and the pixel data element's own header are read
    from it (all of it when deflated), so it may hold fewer than ``size`` bytes past the header.

    Raises:
        UnreadableDataSet: the data set's elements cannot be parsed.
    """
    implicit, little = transfer_syntax == IMPLICIT_LITTLE, transfer_syntax != EXPLICIT_BIG
    measurable = transfer_syntax in (IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG)
    try:
        if transfer_syntax == DEFLATED:  # what arrived inflates, even when cut short
            stream = io.BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream.read()))
        origin = stream.tell()
        _check_encoding(stream, implicit)
        dataset = _read(stream, implicit, little)
        start = stream.tell() - origin
        element = stream.read(12)
    except Exception as e:  # pydicom and zlib raise many kinds on damaged bytes
        raise UnreadableDataSet(f"a data set that cannot be read: {e}") from e
    if not measurable or len(element) < 8 or _tag(element, 0, little) != PIXEL_DATA:
        return Header(dataset, None)
    if implicit:
        length, value = struct.unpack_from("<I", element, 4)[0], 8
    elif element[4:6] in LONG_VRS:  # pydicom read all 12 bytes of this element's header to stop at it
        length, value = struct.unpack_from("<I" if little else ">I", element, 8)[0], 12
    else:
        length, value = struct.unpack_from("<H" if little else ">H", element, 6)[0], 8
    if length == UNDEFINED_LENGTH:
        return Header(dataset, None)
    return Header(dataset, max(0, min(length, size - start - value)))


def _check_encoding(stream: BinaryIO, implicit: bool) -> None:
    """Refuse a data set whose first element is not in the negotiated VR encoding (pydicom would
    guess the other one, with a warning).

    Raises:
        UnreadableDataSet: the first element's VR is two capitals where implicit VR was
            negotiated, or is not where explicit VR was.
    """
    start = stream.tell()
    first = stream.read(6)
    stream.seek(start)
    if len(first) < 6:
        return
    looks_explicit = first[4:5].isupper() and first[5:6].isupper()
    if looks_explicit == implicit:
        raise UnreadableDataSet(f"its first element is in {'explicit' if implicit else 'implicit'} VR where "
                                f"the transfer syntax says {'implicit' if implicit else 'explicit'}")


def _read(stream: BinaryIO, implicit: bool, little: bool) -> Any:
    from pydicom.filereader import read_dataset

    # Elements are read lazily: a damaged one raises when the caller reads it.
    return read_dataset(stream, implicit, little, stop_when=lambda tag, vr, length: tag in PIXEL_TAGS)


def _tag(data: bytes, offset: int, little: bool) -> int:
    group, element = struct.unpack_from("<HH" if little else ">HH", data, offset)
    return (group << 16) | element


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str,
              implementation_class: str, implementation_version: str) -> bytes:
    """The preamble, "DICM" and file meta group (explicit VR little endian) of a Part 10 file
    whose data set, in ``transfer_syntax``, follows unchanged."""
    def element(group_element: int, vr: bytes, value: bytes) -> bytes:
        tag = struct.pack("<HH", group_element >> 16, group_element & 0xFFFF)
        if vr == b"OB":
            return tag + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        return tag + vr + struct.pack("<H", len(value)) + value

    def text(value: str, pad: bytes) -> bytes:
        raw = value.encode("ascii")
        return raw + pad if len(raw) % 2 else raw

    group = (element(0x00020001, b"OB", b"\0\1") + element(0x00020002, b"UI", text(sop_class, b"\0"))
             + element(0x00020003, b"UI", text(sop_instance, b"\0"))
             + element(0x00020010, b"UI", text(transfer_syntax, b"\0"))
             + element(0x00020012, b"UI", text(implementation_class, b"\0"))
             + element(0x00020013, b"SH", text(implementation_version, b" "))
             + element(0x00020016, b"AE", text(source_ae, b" ")))
    return bytes(128) + b"DICM" + element(0x00020000, b"UL", struct.pack("<I", len(group))) + group
