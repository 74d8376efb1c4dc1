"""Plain-Python reference twin of ``navi._fast._bpr`` (same names, same results).

Written for clarity, not speed: tests compare the compiled decoder against it
array for array and error for error, and ``NAVI_PURE_PYTHON=1`` selects it.
Every check mirrors the compiled walk in the same order, so both report the
same first error at the same byte offset.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from navi.errors import DecodeError

MAX_DEPTH = 64

T_STOP, T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64 = 0, 2, 3, 4, 6, 8, 10
T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST = 11, 12, 13, 14, 15
_FIXED = {T_BOOL: 1, T_BYTE: 1, T_I16: 2, T_I32: 4, T_DOUBLE: 8, T_I64: 8}
_VALID = set(_FIXED) | {T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST}

E_TRUNCATED, E_NEGATIVE, E_BAD_TYPE, E_DEPTH, E_TRAILING, E_MISSING_LIST, E_TOO_MANY_ROWS = range(1, 8)
ERROR_REASONS = {
    1: "input truncated",
    2: "negative length or count",
    3: "invalid thrift type",
    4: "nesting too deep",
    5: "trailing bytes after the request",
    6: "required field individualFeaturesList (1: list<DataRecord>) missing",
    7: "too many candidates in one request",
}


class _Fail(Exception):
    def __init__(self, code: int, pos: int, what: str):
        super().__init__(code, pos, what)
        self.code, self.pos, self.what = code, pos, what


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.end = len(data)

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise _Fail(E_TRUNCATED, self.pos, what)

    def i16(self, at: int) -> int:
        return struct.unpack_from(">h", self.data, at)[0]

    def i32(self, at: int) -> int:
        return struct.unpack_from(">i", self.data, at)[0]

    def i64(self, at: int) -> int:
        return struct.unpack_from(">q", self.data, at)[0]

    def f64(self, at: int) -> float:
        return struct.unpack_from(">d", self.data, at)[0]


def _next_field(r: _Reader) -> tuple[int, int] | None:
    """The next field header of a struct as (type, id); None at its STOP byte."""
    r.need(1, "field header")
    ft = r.data[r.pos]
    if ft == T_STOP:
        r.pos += 1
        return None
    r.need(3, "field header")
    fid = r.i16(r.pos + 1)
    r.pos += 3
    return ft, fid


def _skip(r: _Reader, t: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Fail(E_DEPTH, r.pos, "nested value")
    size = _FIXED.get(t, 0)
    if size:
        r.need(size, "scalar value")
        r.pos += size
        return
    if t == T_STRING:
        r.need(4, "string length")
        n = r.i32(r.pos)
        if n < 0:
            raise _Fail(E_NEGATIVE, r.pos, "string length")
        r.pos += 4
        r.need(n, "string bytes")
        r.pos += n
        return
    if t == T_STRUCT:
        while (field := _next_field(r)) is not None:
            _skip(r, field[0], depth + 1)
        return
    if t == T_MAP:
        r.need(6, "map header")
        kt, vt, n = r.data[r.pos], r.data[r.pos + 1], r.i32(r.pos + 2)
        if n < 0:
            raise _Fail(E_NEGATIVE, r.pos + 2, "map size")
        r.pos += 6
        if n == 0:
            return
        if kt not in _VALID or vt not in _VALID:
            raise _Fail(E_BAD_TYPE, r.pos - 6, "map header")
        ks, vs = _FIXED.get(kt, 0), _FIXED.get(vt, 0)
        if ks and vs:
            if n > (r.end - r.pos) // (ks + vs):
                raise _Fail(E_TRUNCATED, r.pos, "map entries")
            r.pos += n * (ks + vs)
            return
        for _ in range(n):
            _skip(r, kt, depth + 1)
            _skip(r, vt, depth + 1)
        return
    if t in (T_SET, T_LIST):
        r.need(5, "list header")
        et, n = r.data[r.pos], r.i32(r.pos + 1)
        if n < 0:
            raise _Fail(E_NEGATIVE, r.pos + 1, "list size")
        r.pos += 5
        if n == 0:
            return
        if et not in _VALID:
            raise _Fail(E_BAD_TYPE, r.pos - 5, "list header")
        size = _FIXED.get(et, 0)
        if size:
            if n > (r.end - r.pos) // size:
                raise _Fail(E_TRUNCATED, r.pos, "list elements")
            r.pos += n * size
            return
        for _ in range(n):
            _skip(r, et, depth + 1)
        return
    raise _Fail(E_BAD_TYPE, r.pos, "value")


def _index_bpr(r: _Reader, max_rows: int) -> tuple[int, int, int]:
    """(list_pos, common_pos, rows) of a validated BPR."""
    list_pos, common_pos, rows = -1, -1, 0
    while (field := _next_field(r)) is not None:
        ft, fid = field
        value_pos = r.pos
        if fid == 1 and ft == T_LIST and r.end - r.pos >= 5 and r.data[r.pos] == T_STRUCT:
            n = r.i32(r.pos + 1)
            if n < 0:
                raise _Fail(E_NEGATIVE, r.pos + 1, "individualFeaturesList size")
            r.pos += 5
            first = r.pos
            for _ in range(n):
                _skip(r, T_STRUCT, 1)
            if n > max_rows:
                raise _Fail(E_TOO_MANY_ROWS, value_pos + 1, "individualFeaturesList size")
            list_pos, rows = first, n
        elif fid == 2 and ft == T_STRUCT:
            _skip(r, T_STRUCT, 1)
            common_pos = value_pos
        else:
            _skip(r, ft, 1)
    if r.pos != r.end:
        raise _Fail(E_TRAILING, r.pos, "end of request")
    if list_pos < 0:
        raise _Fail(E_MISSING_LIST, r.pos, "BatchPredictionRequest")
    return list_pos, common_pos, rows


def _error(index: int, fail: _Fail) -> DecodeError:
    reason = ERROR_REASONS[fail.code]
    if index >= 0:
        reason = f"payload {index}: {reason}"
    return DecodeError(reason, fail.pos, fail.what)


def _as_bytes(i: int, item) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview, np.ndarray)):
        return bytes(item)
    raise TypeError(f"payload {i} is {type(item).__name__}, expected bytes")


# the compiled twin's default: outputs this large are streamed past the cache
DEFAULT_STREAM_MIN_BYTES = 16 << 20

_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class ReportPlan:
    """Which reported feature ids are counted where (one rule for both twins).

    The original's converter (dr_transform converter.rs) observes, while it
    walks each record's continuousFeatures map, an id of the continuous set
    into the continuous histogram, *else* an id of the discrete set into the
    discrete one. Its discrete-map walk (get_discrete), which observes the
    discrete set's values from discreteFeatures, is never called (its call
    is commented out with the discrete tensor it builds, and it indexes a
    second BPR's candidates wrongly), which leaves discrete features, the
    ones the flag names, unreported: we take the evident intent and count
    the discrete set in the discrete maps too.

    ``in_continuous_maps`` / ``in_discrete_maps``: (id, counts row) of the
    ids counted where they appear in those maps. Rows: the continuous ids'
    (sorted, as the original's BTreeSet), then the discrete ids'.
    """

    continuous_ids: tuple[int, ...]
    discrete_ids: tuple[int, ...]
    bounds: tuple[float, ...]
    in_continuous_maps: tuple[tuple[int, int], ...]
    in_discrete_maps: tuple[tuple[int, int], ...]


def report_plan(continuous_ids=(), discrete_ids=(), bounds=()) -> ReportPlan:
    """The ReportPlan of these ids and bucket upper bounds (finite, ascending); ValueError if bad."""
    sets = []
    for ids in (continuous_ids, discrete_ids):
        unique = sorted({int(fid) for fid in ids})
        if unique and not (_INT64[0] <= unique[0] and unique[-1] <= _INT64[1]):
            raise ValueError(f"feature ids must be int64, got {unique[0]} ... {unique[-1]}")
        sets.append(tuple(unique))
    cont, disc = sets
    bounds = tuple(float(b) for b in bounds)
    if (cont or disc) and not bounds:
        raise ValueError("reported features need bucket bounds")
    if any(not math.isfinite(b) for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"bucket bounds must be finite and ascending, got {bounds}")
    cont_row = {fid: row for row, fid in enumerate(cont)}
    disc_row = {fid: len(cont) + row for row, fid in enumerate(disc)}
    in_cont = tuple(cont_row.items()) + tuple((fid, row) for fid, row in disc_row.items() if fid not in cont_row)
    return ReportPlan(cont, disc, bounds, in_cont, tuple(disc_row.items()))


def bucket_of(value: float, bounds: tuple[float, ...]) -> int:
    """Prometheus' bucket of ``value``: the first bound >= it; past them all (and NaN) the +Inf bucket."""
    for index, bound in enumerate(bounds):
        if value <= bound:
            return index
    return len(bounds)


class BprDecoder:
    """Decodes serialized BPRs into the dense tensors of a DenseLayout (reference).

    ``stream_min_bytes`` is kept for parity with the compiled twin, where it
    chooses how rows reach memory; plain Python has no say in that, and the
    values written are the same either way.
    """

    def __init__(self, layout, report_continuous_ids=(), report_discrete_ids=(), report_bounds=()):
        self.layout = layout
        self.stream_min_bytes = DEFAULT_STREAM_MIN_BYTES
        names = [t.name for t in layout.tensors]
        if names[:3] != ["continuous", "binary", "discrete"]:
            raise ValueError(f"unexpected layout tensor order {names}")
        self.widths = [t.width for t in layout.tensors]
        self.emb_ids = list(layout.embedding_ids)
        self.maps = []
        for which, (ids, cols) in enumerate((
            (layout.continuous_ids, layout.continuous_cols),
            (layout.binary_ids, layout.binary_cols),
            (layout.discrete_ids, layout.discrete_cols),
        )):
            table = {}
            for fid, col in zip(np.asarray(ids).tolist(), np.asarray(cols).tolist()):
                if 0 <= col < self.widths[which]:
                    table[fid] = col
            self.maps.append(table)
        plan = report_plan(report_continuous_ids, report_discrete_ids, report_bounds)
        self.reported_continuous_ids = plan.continuous_ids
        self.reported_discrete_ids = plan.discrete_ids
        self.report_bounds_tuple = plan.bounds
        self.n_report_rows = len(plan.continuous_ids) + len(plan.discrete_ids)
        # id -> counts row, for the continuous maps and the discrete maps
        self._report_rows = (dict(plan.in_continuous_maps), dict(plan.in_discrete_maps))

    def _index_all(self, payloads, max_rows: int):
        out = []
        for i, item in enumerate(payloads):
            data = _as_bytes(i, item)
            r = _Reader(data)
            try:
                out.append((data,) + _index_bpr(r, max_rows))
            except _Fail as fail:
                raise _error(i, fail) from None
        return out

    def count_rows(self, payloads, max_rows: int = 1 << 30) -> np.ndarray:
        """Validate every payload and return its number of candidates."""
        return np.asarray([rows for _, _, _, rows in self._index_all(payloads, max_rows)], dtype=np.int64)

    def decode_into(self, payloads, continuous, binary, discrete, embeddings, row_start: int = 0,
                    feature_counts=None, feature_sums=None) -> int:
        """Decode ``payloads`` into rows ``row_start...`` of the given arrays; returns rows written.

        ``feature_counts`` / ``feature_sums``: as the compiled twin's.
        """
        counts = None
        if feature_counts is not None and self.n_report_rows:
            if feature_sums is None:
                raise ValueError("feature_counts needs feature_sums")
            shape = (self.n_report_rows, len(self.report_bounds_tuple) + 1)
            if feature_counts.shape != shape or feature_sums.shape != (self.n_report_rows,):
                raise ValueError(f"feature counts must be {shape} and sums ({self.n_report_rows},)")
            counts = (feature_counts, feature_sums)
        return self._decode_into(payloads, continuous, binary, discrete, embeddings, row_start, counts)

    def _decode_into(self, payloads, continuous, binary, discrete, embeddings, row_start: int, counts) -> int:
        if len(embeddings) != len(self.emb_ids):
            raise ValueError(f"expected {len(self.emb_ids)} embedding arrays, got {len(embeddings)}")
        n_rows = continuous.shape[0]
        if (continuous.shape[1], binary.shape[1], discrete.shape[1]) != tuple(self.widths[:3]):
            raise ValueError("output widths do not match the layout")
        indexed = self._index_all(payloads, 1 << 30)
        total = sum(rows for _, _, _, rows in indexed)
        if row_start < 0 or total > n_rows - row_start:
            raise ValueError(f"{total} rows do not fit at row {row_start} of {n_rows}")
        row = row_start
        for data, list_pos, common_pos, rows in indexed:
            r = _Reader(data)
            template = [
                np.full(self.widths[0], self.layout.tensors[0].default, dtype=np.float32),
                np.zeros(self.widths[1], dtype=np.int64),
                np.zeros(self.widths[2], dtype=np.int64),
                [np.zeros(w, dtype=np.float32) for w in self.widths[3:]],
            ]
            try:
                if common_pos >= 0:
                    r.pos = common_pos
                    self._scatter_record(r, template, counts)
                r.pos = list_pos
                for _ in range(rows):
                    out = [template[0].copy(), template[1].copy(), template[2].copy(), [e.copy() for e in template[3]]]
                    self._scatter_record(r, out, counts)
                    continuous[row], binary[row], discrete[row] = out[0], out[1], out[2]
                    for k, emb in enumerate(out[3]):
                        embeddings[k][row] = emb
                    row += 1
            except _Fail as fail:
                raise _error(-1, fail) from None
        return total

    def _scatter_record(self, r: _Reader, out, counts) -> None:
        """Write one DataRecord's known features into ``out``; count reported ones into ``counts``."""
        cont, binary, disc, embs = out
        while (field := _next_field(r)) is not None:
            ft, fid = field
            if fid == 1 and ft == T_SET and r.end - r.pos >= 5 and r.data[r.pos] == T_I64:
                n = r.i32(r.pos + 1)
                if n < 0 or n > (r.end - r.pos - 5) // 8:
                    raise _Fail(E_TRUNCATED, r.pos, "binaryFeatures")
                for i in range(n):
                    col = self.maps[1].get(r.i64(r.pos + 5 + 8 * i), -1)
                    if col >= 0:
                        binary[col] = 1
                r.pos += 5 + n * 8
            elif fid in (2, 3) and ft == T_MAP and r.end - r.pos >= 6 and r.data[r.pos] == T_I64 \
                    and r.data[r.pos + 1] == (T_DOUBLE if fid == 2 else T_I64):
                n = r.i32(r.pos + 2)
                if n < 0 or n > (r.end - r.pos - 6) // 16:
                    raise _Fail(E_TRUNCATED, r.pos, "feature map")
                base = r.pos + 6
                report = self._report_rows[0 if fid == 2 else 1] if counts is not None else {}
                for i in range(n):
                    key = r.i64(base + 16 * i)
                    row = report.get(key)
                    if row is not None:
                        value = r.f64(base + 16 * i + 8) if fid == 2 else float(r.i64(base + 16 * i + 8))
                        counts[0][row, bucket_of(value, self.report_bounds_tuple)] += 1
                        counts[1][row] += value
                    if fid == 2:
                        col = self.maps[0].get(key, -1)
                        if col >= 0:
                            # out-of-range doubles become +-inf, a signalling NaN a quiet
                            # one, as the C cast does
                            with np.errstate(over="ignore", invalid="ignore"):
                                cont[col] = np.float32(r.f64(base + 16 * i + 8))
                    else:
                        col = self.maps[2].get(key, -1)
                        if col >= 0:
                            disc[col] = r.i64(base + 16 * i + 8)
                r.pos = base + n * 16
            elif fid == 8 and ft == T_MAP and r.end - r.pos >= 6 and r.data[r.pos] == T_I64 \
                    and r.data[r.pos + 1] == T_STRUCT:
                n = r.i32(r.pos + 2)
                if n < 0:
                    raise _Fail(E_NEGATIVE, r.pos + 2, "tensors size")
                r.pos += 6
                for _ in range(n):
                    r.need(8, "tensors key")
                    key = r.i64(r.pos)
                    r.pos += 8
                    matches = [k for k, fid_k in enumerate(self.emb_ids) if fid_k == key]
                    if not matches:
                        _skip(r, T_STRUCT, 2)
                    else:
                        self._scatter_tensor(r, [embs[k] for k in matches])
            else:
                _skip(r, ft, 1)

    def _scatter_tensor(self, r: _Reader, targets) -> None:
        for dst in targets:
            dst[:] = 0
        while (field := _next_field(r)) is not None:
            ft, fid = field
            if not (fid == 5 and ft == T_STRUCT):
                _skip(r, ft, 3)
                continue
            while (inner := _next_field(r)) is not None:
                ft2, fid2 = inner
                if fid2 == 1 and ft2 == T_LIST and r.end - r.pos >= 5 and r.data[r.pos] == T_DOUBLE:
                    n = r.i32(r.pos + 1)
                    if n < 0 or n > (r.end - r.pos - 5) // 8:
                        raise _Fail(E_TRUNCATED, r.pos, "floatTensor")
                    values = np.frombuffer(r.data, dtype=">f8", count=n, offset=r.pos + 5)
                    for dst in targets:
                        count = min(n, dst.shape[0])
                        # overflow gives inf, a signalling NaN a quiet one, as the compiled twin
                        with np.errstate(over="ignore", invalid="ignore"):
                            dst[:count] = values[:count].astype(np.float32)
                    r.pos += 5 + n * 8
                else:
                    _skip(r, ft2, 4)
