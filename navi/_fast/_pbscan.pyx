# cython: language_level=3
"""Compiled twin of ``navi._fast._pbscan_ref`` (same function, same results).

Walks a serialized PredictRequest without the GIL-heavy protobuf object model:
C-level varint and bounds checks per field, Python objects only for the few
pieces of an input tensor that holds ``string_val`` values. See the reference
module for the contract.
"""
from libc.stdint cimport uint8_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

DEF INPUTS_FIELD = 2
DEF ENTRY_KEY = 1
DEF ENTRY_VALUE = 2
DEF STRING_VAL_FIELD = 8


cdef struct Field:
    uint64_t number
    int wire
    Py_ssize_t value_start
    Py_ssize_t value_end
    Py_ssize_t next


cdef inline int read_varint(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end, uint64_t* out) noexcept nogil:
    """0 and the value in ``out``; -1 when it runs past ``end`` or 10 bytes."""
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef uint8_t byte
    cdef Py_ssize_t p = pos[0]
    while p < end and shift < 70:
        byte = buf[p]
        p += 1
        if shift < 64:
            result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            out[0] = result
            pos[0] = p
            return 0
        shift += 7
    return -1


cdef inline int read_field(const uint8_t* buf, Py_ssize_t pos, Py_ssize_t end, Field* f) noexcept nogil:
    cdef uint64_t tag, value
    if read_varint(buf, &pos, end, &tag):
        return -1
    f.number = tag >> 3
    f.wire = <int>(tag & 7)
    if f.number == 0:
        return -1
    f.value_start = pos
    if f.wire == 0:
        if read_varint(buf, &pos, end, &value):
            return -1
    elif f.wire == 1 or f.wire == 5:
        if end - pos < (8 if f.wire == 1 else 4):
            return -1
        pos += 8 if f.wire == 1 else 4
    elif f.wire == 2:
        if read_varint(buf, &pos, end, &value):
            return -1
        if value > <uint64_t>(end - pos):
            return -1
        f.value_start = pos
        pos += <Py_ssize_t>value
    else:
        return -1  # groups and invalid wire types
    f.value_end = pos
    f.next = pos
    return 0


cdef bytes encode_varint(uint64_t value):
    cdef uint8_t out[10]
    cdef int n = 0
    while value >= 0x80:
        out[n] = <uint8_t>((value & 0x7F) | 0x80)
        value >>= 7
        n += 1
    out[n] = <uint8_t>value
    return PyBytes_FromStringAndSize(<char*>out, n + 1)


cdef object scan_tensor(const uint8_t* buf, Py_ssize_t start, Py_ssize_t end):
    """(kept ranges, string_val spans) of one TensorProto, or None."""
    cdef list kept = []
    cdef list spans = []
    cdef Field f
    cdef Py_ssize_t pos = start, kept_start = -1, kept_end = -1
    while pos < end:
        if read_field(buf, pos, end, &f):
            return None
        if f.number == STRING_VAL_FIELD and f.wire == 2:
            spans.append((f.value_start, f.value_end - f.value_start))
        elif kept_end == pos:
            kept_end = f.next
        else:
            if kept_start >= 0:
                kept.append((kept_start, kept_end))
            kept_start = pos
            kept_end = f.next
        pos = f.next
    if kept_start >= 0:
        kept.append((kept_start, kept_end))
    return kept, spans


def split_string_values(bytes raw):
    """Split a serialized PredictRequest into its string values and the rest.

    Returns ``(stripped, spans)`` or ``None``; see
    ``navi._fast._pbscan_ref.split_string_values``.
    """
    cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos = 0, copied_to = 0, epos
    cdef Py_ssize_t key_start, key_end, value_start, value_end
    cdef Field f, e
    cdef list pieces = []
    cdef dict spans_by_name = {}
    while pos < end:
        if read_field(buf, pos, end, &f):
            return None
        if f.number != INPUTS_FIELD or f.wire != 2:
            pos = f.next
            continue
        key_start = key_end = value_start = value_end = -1
        key = ""
        epos = f.value_start
        while epos < f.value_end:
            if read_field(buf, epos, f.value_end, &e):
                return None
            if e.number == ENTRY_KEY and e.wire == 2 and key_start < 0:
                key_start, key_end = epos, e.next
                try:
                    key = raw[e.value_start:e.value_end].decode("utf-8")
                except UnicodeDecodeError:
                    return None
            elif e.number == ENTRY_VALUE and e.wire == 2 and value_start < 0:
                value_start, value_end = e.value_start, e.value_end
            else:
                return None  # repeated, unknown or mistyped entry field: protobuf decides
            epos = e.next
        if value_start >= 0:
            scanned = scan_tensor(buf, value_start, value_end)
            if scanned is None:
                return None
            kept, spans = scanned
        else:
            kept, spans = [], []
        if not spans:
            spans_by_name.pop(key, None)  # a later entry replaces an earlier one
            pos = f.next
            continue
        spans_by_name[key] = spans
        tensor = b"".join([raw[a:b] for a, b in kept])
        body = (raw[key_start:key_end] if key_start >= 0 else b"") + \
            bytes([ENTRY_VALUE << 3 | 2]) + encode_varint(len(tensor)) + tensor
        pieces.append(raw[copied_to:pos])
        pieces.append(bytes([INPUTS_FIELD << 3 | 2]) + encode_varint(len(body)) + body)
        copied_to = pos = f.next
    if not spans_by_name:
        return raw, {}
    pieces.append(raw[copied_to:end])
    return b"".join(pieces), spans_by_name


def split_length_prefixed(object raw, Py_ssize_t count):
    """KServe BYTES elements of ``raw`` (each a 4-byte little-endian length, then its bytes).

    As ``_pbscan_ref.split_length_prefixed``: a list of ``count`` memoryviews
    of ``raw`` (no element is copied: the BPR decoder reads them in place), or
    ``ValueError`` naming where the bytes disagree with ``count``. The list
    grows per element read: ``count`` comes from the client.
    """
    cdef const uint8_t[::1] data = raw
    cdef Py_ssize_t end = data.shape[0]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t index
    cdef Py_ssize_t length
    cdef const uint8_t* buf = &data[0] if end > 0 else NULL
    view = memoryview(raw).cast("B") if end > 0 else memoryview(b"")
    items = []
    for index in range(count):
        if pos + 4 > end:
            raise ValueError(f"raw BYTES contents end after {index} of {count} elements")
        length = (<Py_ssize_t>buf[pos]) | (<Py_ssize_t>buf[pos + 1] << 8) | \
            (<Py_ssize_t>buf[pos + 2] << 16) | (<Py_ssize_t>buf[pos + 3] << 24)
        pos += 4
        if length > end - pos:
            raise ValueError(f"element {index} claims {length} bytes, only {end - pos} left")
        items.append(view[pos:pos + length])
        pos += length
    if pos != end:
        raise ValueError(f"{end - pos} trailing bytes after {count} BYTES elements")
    return items


cdef object walk_top_level(object raw, tuple numbers, bint every):
    """The length-delimited top-level records numbered in ``numbers``: the last of each as
    ``{number: (value start, value end)}``, or with ``every`` all of them in order as
    ``[(record start, value start, value end)]``. One walk for both twins' entry points."""
    cdef const uint8_t[::1] data = raw
    cdef Py_ssize_t end = data.shape[0]
    cdef const uint8_t* buf = &data[0] if end > 0 else NULL
    cdef Py_ssize_t pos = 0, start
    cdef uint64_t tag, value, number
    cdef int wire
    cdef dict found = {}
    cdef list records = []
    while pos < end:
        start = pos
        if read_varint(buf, &pos, end, &tag):
            raise ValueError("truncated or overlong varint", start)
        number = tag >> 3
        wire = <int>(tag & 7)
        if wire == 0:
            if read_varint(buf, &pos, end, &value):
                raise ValueError("truncated or overlong varint", pos)
        elif wire == 1 or wire == 5:
            if end - pos < (8 if wire == 1 else 4):
                raise ValueError(f"field {number} runs past the message's end", start)
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            if read_varint(buf, &pos, end, &value):
                raise ValueError("truncated or overlong varint", pos)
            if value > <uint64_t>(end - pos):
                raise ValueError(f"field {number} runs past the message's end", start)
            if number in numbers:
                if every:
                    records.append((start, pos, pos + <Py_ssize_t>value))
                else:
                    found[number] = (pos, pos + <Py_ssize_t>value)
            pos += <Py_ssize_t>value
        else:
            raise ValueError(f"wire type {wire} at the top level", start)
    return records if every else found


def top_level_spans(object raw, tuple numbers):
    """``{number: (start, end)}``: where the last length-delimited top-level field of each of
    ``numbers`` lies in ``raw``; ``ValueError(reason, byte offset)`` when the records do
    not add up to the message. As ``_pbscan_ref.top_level_spans``.
    """
    return walk_top_level(raw, numbers, False)


def top_level_records(object raw, uint64_t number):
    """``[(record start, value start, value end)]`` of every length-delimited top-level
    field ``number`` in ``raw``, in order. As ``_pbscan_ref.top_level_records``.
    """
    return walk_top_level(raw, (number,), True)
