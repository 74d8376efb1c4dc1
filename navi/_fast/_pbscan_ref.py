"""Plain-Python twin of ``navi._fast._pbscan``: lift string tensors out of a PredictRequest.

A BPR request is one ~1.5 MB ``string_val`` inside a ``PredictRequest``.
Parsing it with protobuf copies those bytes into the message, and reading
``string_val`` copies them again into a Python ``bytes``. This scanner walks the
serialized request once, notes where each input's ``string_val`` values lie
in the buffer, and returns the request without them (a few hundred bytes,
cheap to parse), so the values reach the converter as views of the bytes
gRPC received.

Only the shape protobuf writers produce is taken: anything else (a map entry
with repeated or unknown fields, groups, a malformed or truncated message, a
key that is not UTF-8) gives ``None`` and the caller parses the whole request
the ordinary way, so every message means exactly what protobuf says it means.
Every length is checked against the end of the buffer before use.
"""
from __future__ import annotations

# PredictRequest.inputs = 2 (map<string, TensorProto>); entry key = 1, value = 2;
# TensorProto.string_val = 8. Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
INPUTS_FIELD = 2
ENTRY_KEY = 1
ENTRY_VALUE = 2
STRING_VAL_FIELD = 8
MAX_VARINT_BYTES = 10


def _varint(buf, pos: int, end: int):
    """(value, next position), or None when the varint runs past ``end`` or 10 bytes."""
    result = 0
    shift = 0
    while pos < end and shift < 7 * MAX_VARINT_BYTES:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos  # as a C uint64_t keeps it
        shift += 7
    return None


def _field(buf, pos: int, end: int):
    """(field number, wire type, value start, value end, next position) or None."""
    got = _varint(buf, pos, end)
    if got is None:
        return None
    tag, pos = got
    number, wire = tag >> 3, tag & 7
    if number == 0:
        return None
    if wire == 0:
        got = _varint(buf, pos, end)
        if got is None:
            return None
        return number, wire, pos, got[1], got[1]
    if wire == 1 or wire == 5:
        size = 8 if wire == 1 else 4
        if end - pos < size:
            return None
        return number, wire, pos, pos + size, pos + size
    if wire == 2:
        got = _varint(buf, pos, end)
        if got is None:
            return None
        length, pos = got
        if length > end - pos:
            return None
        return number, wire, pos, pos + length, pos + length
    return None  # groups (3, 4) and invalid wire types


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Declined(Exception):
    """The message is malformed or not in the shape this scanner takes."""


def _fields(buf, pos: int, end: int):
    """Each field of ``buf[pos:end]`` as (start, number, wire, value start, value end, next)."""
    while pos < end:
        got = _field(buf, pos, end)
        if got is None:
            raise _Declined
        yield (pos,) + got
        pos = got[4]


def _scan_tensor(buf, start: int, end: int):
    """(kept byte ranges, string_val spans) of one TensorProto."""
    kept: list[tuple[int, int]] = []
    spans: list[tuple[int, int]] = []
    for pos, number, wire, value_start, value_end, nxt in _fields(buf, start, end):
        if number == STRING_VAL_FIELD and wire == 2:
            spans.append((value_start, value_end - value_start))
        elif kept and kept[-1][1] == pos:
            kept[-1] = (kept[-1][0], nxt)
        else:
            kept.append((pos, nxt))
    return kept, spans


def split_string_values(raw: bytes):
    """Split a serialized PredictRequest into its string values and the rest.

    Returns ``(stripped, spans)``: ``stripped`` is the request without the
    ``string_val`` fields of its input tensors (``raw`` itself when it has
    none) and ``spans`` maps each input name whose tensor had them to a list
    of ``(offset, length)`` of its values in ``raw``, in order. Returns
    ``None`` when the message is malformed or not in the shape handled here:
    parse ``raw`` in full then.
    """
    try:
        return _split(raw)
    except _Declined:
        return None


def _split(raw: bytes):
    buf = memoryview(raw)
    end = len(raw)
    pieces: list[bytes] = []
    copied_to = 0  # raw[copied_to:pos] still to copy into pieces
    spans_by_name: dict[str, list[tuple[int, int]]] = {}
    for pos, number, wire, value_start, value_end, nxt in _fields(buf, 0, end):
        if number != INPUTS_FIELD or wire != 2:
            continue
        key_range = value_range = None
        key = ""
        for epos, enumber, ewire, evalue_start, evalue_end, enxt in _fields(buf, value_start, value_end):
            if enumber == ENTRY_KEY and ewire == 2 and key_range is None:
                key_range = (epos, enxt)
                try:
                    key = bytes(buf[evalue_start:evalue_end]).decode("utf-8")
                except UnicodeDecodeError:
                    raise _Declined from None
            elif enumber == ENTRY_VALUE and ewire == 2 and value_range is None:
                value_range = (evalue_start, evalue_end)
            else:
                raise _Declined  # repeated, unknown or mistyped entry field: protobuf decides
        kept, spans = _scan_tensor(buf, *value_range) if value_range is not None else ([], [])
        if not spans:
            spans_by_name.pop(key, None)  # a later entry replaces an earlier one
            continue
        spans_by_name[key] = spans
        tensor = b"".join(bytes(buf[a:b]) for a, b in kept)
        body = (bytes(buf[key_range[0]:key_range[1]]) if key_range else b"") + \
            bytes([ENTRY_VALUE << 3 | 2]) + _encode_varint(len(tensor)) + tensor
        pieces.append(bytes(buf[copied_to:pos]))
        pieces.append(bytes([INPUTS_FIELD << 3 | 2]) + _encode_varint(len(body)) + body)
        copied_to = nxt
    if not spans_by_name:
        return raw, {}
    pieces.append(bytes(buf[copied_to:end]))
    return b"".join(pieces), spans_by_name





def split_length_prefixed(raw, count: int) -> list[memoryview]:
    """KServe BYTES elements of ``raw`` (each a 4-byte little-endian length, then its bytes).

    A list of ``count`` memoryviews of ``raw`` (no element copied: the BPR
    decoder reads them in place), or ``ValueError`` naming where the bytes
    disagree with ``count``. The list grows per element read: ``count`` comes
    from the client, so nothing of its size is allocated before the bytes are
    seen to hold that many.
    """
    view = memoryview(raw).cast("B")
    items: list[memoryview] = []
    pos = 0
    end = len(view)
    for index in range(count):
        if pos + 4 > end:
            raise ValueError(f"raw BYTES contents end after {index} of {count} elements")
        length = int.from_bytes(view[pos:pos + 4], "little")
        pos += 4
        if length > end - pos:
            raise ValueError(f"element {index} claims {length} bytes, only {end - pos} left")
        items.append(view[pos:pos + length])
        pos += length
    if pos != end:
        raise ValueError(f"{end - pos} trailing bytes after {count} BYTES elements")
    return items


def _walk_top_level(raw, numbers: tuple[int, ...], every: bool):
    """The length-delimited top-level records numbered in ``numbers``: the last of each as
    ``{number: (value start, value end)}``, or with ``every`` all of them in order as
    ``[(record start, value start, value end)]``.

    Only the top-level records are walked, each skipped by its length.
    ``ValueError(reason, byte offset)`` when the records do not add up to the
    message: a varint truncated or longer than 10 bytes, a field running past
    the end, a group or invalid wire type.
    """
    buf = memoryview(raw).cast("B")
    end = len(buf)
    pos = 0
    found: dict[int, tuple[int, int]] = {}
    records: list[tuple[int, int, int]] = []
    while pos < end:
        start = pos
        got = _varint(buf, pos, end)
        if got is None:
            raise ValueError("truncated or overlong varint", start)
        tag, pos = got
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            got = _varint(buf, pos, end)
            if got is None:
                raise ValueError("truncated or overlong varint", pos)
            pos = got[1]
        elif wire in (1, 5):
            if end - pos < (8 if wire == 1 else 4):
                raise ValueError(f"field {number} runs past the message's end", start)
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            got = _varint(buf, pos, end)
            if got is None:
                raise ValueError("truncated or overlong varint", pos)
            length, pos = got
            if length > end - pos:
                raise ValueError(f"field {number} runs past the message's end", start)
            if number in numbers:
                if every:
                    records.append((start, pos, pos + length))
                else:
                    found[number] = (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"wire type {wire} at the top level", start)
    return records if every else found


def top_level_spans(raw, numbers: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """Where the last length-delimited top-level field of each of ``numbers`` lies in ``raw``.

    ``{number: (start, end)}`` of each found (a peek: finding the model a
    request names costs the same whatever its tensors hold). Errors as
    ``_walk_top_level``.
    """
    return _walk_top_level(raw, numbers, False)


def top_level_records(raw, number: int) -> list[tuple[int, int, int]]:
    """``[(record start, value start, value end)]`` of every length-delimited top-level field
    ``number`` in ``raw``, in order (``ModelInferRequest.raw_input_contents``, lifted out as
    views). Errors as ``_walk_top_level``.
    """
    return _walk_top_level(raw, (number,), True)


__all__ = ["split_length_prefixed", "split_string_values", "top_level_records", "top_level_spans"]
