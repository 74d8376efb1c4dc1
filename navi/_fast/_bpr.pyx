# cython: language_level=3
"""One-pass decoder of Thrift BatchPredictionRequests into dense arrays.

The compiled twin of ``navi._fast._bpr_ref`` (same public names, same results,
same errors). Two phases per call, as pandas' hashing.pyx does: under the GIL
we collect raw pointers to the payloads and output arrays; then, with the GIL
released, every payload is validated (a skip-walk) and scattered.

Safety rules, all enforced here:
- every read is checked against the end of its payload first;
- no count or length from the wire sizes an allocation: outputs are sized by
  the caller from validated row counts, scratch space by the layout widths;
- nesting depth is capped at MAX_DEPTH;
- a malformed payload raises DecodeError(offset, what) and nothing is written
  for the batch.
"""
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from libc.math cimport NAN
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check

import numpy as np

from navi.errors import DecodeError

# the C kernels the walks below call (bounds already checked): bpr_kernels.h
cdef extern from "bpr_kernels.h":
    int64_t navi_i64(const uint8_t* p) nogil
    int32_t navi_i32(const uint8_t* p) nogil
    int16_t navi_i16(const uint8_t* p) nogil
    ctypedef struct navi_table:
        void* block
    int navi_table_build(navi_table* t, const int64_t* ids, const int32_t* cols, Py_ssize_t n) nogil
    void navi_scatter_f32(const navi_table* t, const uint8_t* p, int32_t n, float* dst) nogil
    void navi_scatter_i64(const navi_table* t, const uint8_t* p, int32_t n, int64_t* dst) nogil
    void navi_scatter_present(const navi_table* t, const uint8_t* p, int32_t n, int64_t* dst) nogil
    ctypedef struct navi_report:
        const int32_t* cols
        const int32_t* rows
        const double* bounds
        int32_t n_bounds
        int64_t* counts
        double* sums
    void navi_scatter_f32_report(const navi_table* t, const uint8_t* p, int32_t n, float* dst,
                                 const navi_report* rep) nogil
    void navi_scatter_i64_report(const navi_table* t, const uint8_t* p, int32_t n, int64_t* dst,
                                 const navi_report* rep) nogil
    int32_t NAVI_REPORTED
    void navi_copy_row(void* dst, const void* src, size_t nbytes) nogil
    Py_ssize_t navi_sparse_f32(const float* row, Py_ssize_t width, float fill, int32_t* cols, float* vals) nogil
    void navi_fill_f32(float* dst, Py_ssize_t width, float fill) nogil
    void navi_put_f32(float* dst, const int32_t* cols, const float* vals, Py_ssize_t n) nogil
    void navi_stream_row(void* dst, const void* src, size_t nbytes) nogil
    void navi_stream_done() nogil
    void navi_f64be_to_f32(float* dst, const uint8_t* src, int32_t n) nogil

DEF MAX_DEPTH = 64
DEF MAX_EMBEDDINGS = 8

# Thrift binary type codes
DEF T_STOP = 0
DEF T_BOOL = 2
DEF T_BYTE = 3
DEF T_DOUBLE = 4
DEF T_I16 = 6
DEF T_I32 = 8
DEF T_I64 = 10
DEF T_STRING = 11
DEF T_STRUCT = 12
DEF T_MAP = 13
DEF T_SET = 14
DEF T_LIST = 15

# error codes (the same numbers as _bpr_ref's E_* constants)
DEF E_OK = 0
DEF E_TRUNCATED = 1
DEF E_NEGATIVE = 2
DEF E_BAD_TYPE = 3
DEF E_DEPTH = 4
DEF E_TRAILING = 5
DEF E_MISSING_LIST = 6
DEF E_TOO_MANY_ROWS = 7

# one message table for both twins: the codes above match _bpr_ref's E_* constants
from navi._fast._bpr_ref import ERROR_REASONS
# and one streaming threshold. Measured on the home layout (27 KB rows), one
# output of 2,000 rows: 1.15x the candidates/s of writing rows in place, two
# threads 1.13x; outputs the size of one request stay in place (building them
# in a staging row cost 13%).
from navi._fast._bpr_ref import DEFAULT_STREAM_MIN_BYTES
# and one rule for which reported feature ids are counted where, and in which bucket
from navi._fast._bpr_ref import ReportPlan, bucket_of, report_plan

cdef struct Reader:
    const uint8_t* data
    Py_ssize_t pos
    Py_ssize_t end
    int err
    Py_ssize_t err_pos
    const char* what

cdef struct BprIndex:
    Py_ssize_t list_pos
    Py_ssize_t common_pos
    int64_t rows

cdef struct Rows:
    # row pointers of one output row (or of the template row)
    float* cont
    int64_t* binary
    int64_t* disc
    float* emb[MAX_EMBEDDINGS]


cdef inline int fail(Reader* r, int code, Py_ssize_t pos, const char* what) noexcept nogil:
    if r.err == E_OK:
        r.err = code
        r.err_pos = pos
        r.what = what
    return -1


cdef inline int need(Reader* r, Py_ssize_t n, const char* what) noexcept nogil:
    if n > r.end - r.pos:
        return fail(r, E_TRUNCATED, r.pos, what)
    return 0


cdef inline int fixed_size(int t) noexcept nogil:
    if t == T_BOOL or t == T_BYTE:
        return 1
    if t == T_I16:
        return 2
    if t == T_I32:
        return 4
    if t == T_DOUBLE or t == T_I64:
        return 8
    return 0


cdef inline bint valid_type(int t) noexcept nogil:
    return (t == T_BOOL or t == T_BYTE or t == T_DOUBLE or t == T_I16 or t == T_I32
            or t == T_I64 or t == T_STRING or t == T_STRUCT or t == T_MAP or t == T_SET
            or t == T_LIST)


cdef inline int next_field(Reader* r, int* ft, int16_t* fid) noexcept nogil:
    """Read a struct's next field header: 1 = a field, 0 = its STOP byte, -1 = error."""
    if need(r, 1, "field header"):
        return -1
    ft[0] = r.data[r.pos]
    if ft[0] == T_STOP:
        r.pos += 1
        return 0
    if need(r, 3, "field header"):
        return -1
    fid[0] = navi_i16(r.data + r.pos + 1)
    r.pos += 3
    return 1


cdef int skip(Reader* r, int t, int depth) noexcept nogil:
    """Skip one value of thrift type t, validating it."""
    cdef int size, kt, vt, et, ft, ks, vs, got
    cdef int16_t fid
    cdef int32_t n, i
    if depth > MAX_DEPTH:
        return fail(r, E_DEPTH, r.pos, "nested value")
    size = fixed_size(t)
    if size:
        if need(r, size, "scalar value"):
            return -1
        r.pos += size
        return 0
    if t == T_STRING:
        if need(r, 4, "string length"):
            return -1
        n = navi_i32(r.data + r.pos)
        if n < 0:
            return fail(r, E_NEGATIVE, r.pos, "string length")
        r.pos += 4
        if need(r, n, "string bytes"):
            return -1
        r.pos += n
        return 0
    if t == T_STRUCT:
        while True:
            got = next_field(r, &ft, &fid)
            if got <= 0:
                return got
            if skip(r, ft, depth + 1):
                return -1
    if t == T_MAP:
        if need(r, 6, "map header"):
            return -1
        kt = r.data[r.pos]
        vt = r.data[r.pos + 1]
        n = navi_i32(r.data + r.pos + 2)
        if n < 0:
            return fail(r, E_NEGATIVE, r.pos + 2, "map size")
        r.pos += 6
        if n == 0:
            return 0
        if not valid_type(kt) or not valid_type(vt):
            return fail(r, E_BAD_TYPE, r.pos - 6, "map header")
        ks = fixed_size(kt)
        vs = fixed_size(vt)
        if ks and vs:
            if n > (r.end - r.pos) // (ks + vs):
                return fail(r, E_TRUNCATED, r.pos, "map entries")
            r.pos += <Py_ssize_t>n * (ks + vs)
            return 0
        for i in range(n):
            if skip(r, kt, depth + 1) or skip(r, vt, depth + 1):
                return -1
        return 0
    if t == T_SET or t == T_LIST:
        if need(r, 5, "list header"):
            return -1
        et = r.data[r.pos]
        n = navi_i32(r.data + r.pos + 1)
        if n < 0:
            return fail(r, E_NEGATIVE, r.pos + 1, "list size")
        r.pos += 5
        if n == 0:
            return 0
        if not valid_type(et):
            return fail(r, E_BAD_TYPE, r.pos - 5, "list header")
        size = fixed_size(et)
        if size:
            if n > (r.end - r.pos) // size:
                return fail(r, E_TRUNCATED, r.pos, "list elements")
            r.pos += <Py_ssize_t>n * size
            return 0
        for i in range(n):
            if skip(r, et, depth + 1):
                return -1
        return 0
    return fail(r, E_BAD_TYPE, r.pos, "value")


cdef int index_bpr(Reader* r, BprIndex* out, int64_t max_rows) noexcept nogil:
    """Validate a whole BPR and find its candidate list and common features."""
    cdef int ft, et, got
    cdef int16_t fid
    cdef int32_t n, i
    cdef Py_ssize_t value_pos, list_pos
    out.list_pos = -1
    out.common_pos = -1
    out.rows = 0
    while True:
        got = next_field(r, &ft, &fid)
        if got < 0:
            return -1
        if got == 0:
            break
        value_pos = r.pos
        if fid == 1 and ft == T_LIST and r.end - r.pos >= 5 and r.data[r.pos] == T_STRUCT:
            n = navi_i32(r.data + r.pos + 1)
            if n < 0:
                return fail(r, E_NEGATIVE, r.pos + 1, "individualFeaturesList size")
            r.pos += 5
            list_pos = r.pos
            for i in range(n):
                if skip(r, T_STRUCT, 1):
                    return -1
            if n > max_rows:
                return fail(r, E_TOO_MANY_ROWS, value_pos + 1, "individualFeaturesList size")
            out.list_pos = list_pos
            out.rows = n
        elif fid == 2 and ft == T_STRUCT:
            if skip(r, T_STRUCT, 1):
                return -1
            out.common_pos = value_pos
        elif skip(r, ft, 1):
            return -1
    if r.pos != r.end:
        return fail(r, E_TRAILING, r.pos, "end of request")
    if out.list_pos < 0:
        return fail(r, E_MISSING_LIST, r.pos, "BatchPredictionRequest")
    return 0





cdef _build_table(navi_table* table, placed):
    """Build ``table`` from a dict id -> slot value (a column, or a reported index)."""
    cdef int64_t[::1] keys = np.fromiter(placed.keys(), dtype=np.int64, count=len(placed))
    cdef int32_t[::1] columns = np.fromiter(placed.values(), dtype=np.int32, count=len(placed))
    cdef int64_t dummy_key = 0
    cdef int32_t dummy_col = 0
    if navi_table_build(table, &keys[0] if len(placed) else &dummy_key,
                        &columns[0] if len(placed) else &dummy_col, len(placed)):
        raise MemoryError()


cdef class BprDecoder:
    """Decodes serialized BPRs into the dense tensors of a DenseLayout.

    Parameters
    ----------
    layout : navi.segdense.DenseLayout
        Which feature id lands in which column of which tensor.

    Thread-safe: one decoder may serve many threads at once; each call keeps
    its scratch space to itself and runs without the GIL.

    Attributes
    ----------
    stream_min_bytes : int
        A call whose output is at least this large (default 16 MiB, past what
        the cache would keep) builds each row in cache and streams it out with
        non-temporal stores; smaller outputs, which their reader finds in
        cache, are written in place. The values written are the same.
    """

    cdef navi_table tables[3]  # continuous, binary, discrete
    # reported features, for the continuous maps [0] and the discrete maps [1]:
    # the id table with reported slots (block NULL: nothing reported there),
    # each reported index's column and counts row; the bucket bounds
    cdef navi_table report_tables[2]
    cdef int32_t* report_cols[2]
    cdef int32_t* report_rows[2]
    cdef double* report_bounds
    cdef int32_t n_report_bounds
    cdef Py_ssize_t n_reported
    cdef readonly tuple reported_continuous_ids
    cdef readonly tuple reported_discrete_ids
    cdef readonly tuple report_bounds_tuple
    cdef int64_t emb_ids[MAX_EMBEDDINGS]
    cdef int n_emb
    cdef float cont_default
    cdef Py_ssize_t widths[3 + MAX_EMBEDDINGS]
    cdef Py_ssize_t row_bytes  # one output row across every tensor
    cdef public object layout
    cdef public Py_ssize_t stream_min_bytes

    def __cinit__(self, *args, **kwargs):
        cdef int i
        for i in range(3):
            self.tables[i].block = NULL
        for i in range(2):
            self.report_tables[i].block = NULL
            self.report_cols[i] = NULL
            self.report_rows[i] = NULL
        self.report_bounds = NULL
        self.n_report_bounds = 0
        self.n_reported = 0

    def __init__(self, layout, report_continuous_ids=(), report_discrete_ids=(), report_bounds=()):
        self.layout = layout
        self.stream_min_bytes = DEFAULT_STREAM_MIN_BYTES
        names = [t.name for t in layout.tensors]
        if names[:3] != ["continuous", "binary", "discrete"]:
            raise ValueError(f"unexpected layout tensor order {names}")
        if len(layout.embedding_ids) > MAX_EMBEDDINGS:
            raise ValueError(f"at most {MAX_EMBEDDINGS} embeddings are supported")
        self.n_emb = len(layout.embedding_ids)
        self.cont_default = layout.tensors[0].default
        for i, tensor in enumerate(layout.tensors):
            if tensor.width >= NAVI_REPORTED:
                raise ValueError(f"tensor {tensor.name} is {tensor.width} wide; at most {NAVI_REPORTED - 1}")
            self.widths[i] = tensor.width
        # the decoder's own row: float32 continuous and embeddings, int64 binary and discrete
        self.row_bytes = self.widths[0] * 4 + (self.widths[1] + self.widths[2]) * 8
        for i in range(self.n_emb):
            self.row_bytes += self.widths[3 + i] * 4
        for i, fid in enumerate(layout.embedding_ids):
            self.emb_ids[i] = fid
        pairs = (
            (layout.continuous_ids, layout.continuous_cols),
            (layout.binary_ids, layout.binary_cols),
            (layout.discrete_ids, layout.discrete_cols),
        )
        placed = []
        for i, (ids, cols) in enumerate(pairs):
            # a column outside the tensor is ignored, as the spec notes say; a
            # repeated id keeps its last column, as the reference's dict does
            placed.append({int(fid): int(c) for fid, c in zip(np.asarray(ids, dtype=np.int64).tolist(),
                                                               np.asarray(cols, dtype=np.int64).tolist())
                           if 0 <= c < self.widths[i]})
            _build_table(&self.tables[i], placed[i])
        self._init_report(placed, report_continuous_ids, report_discrete_ids, report_bounds)

    cdef _init_report(self, placed, report_continuous_ids, report_discrete_ids, report_bounds):
        plan = report_plan(report_continuous_ids, report_discrete_ids, report_bounds)
        self.reported_continuous_ids = plan.continuous_ids
        self.reported_discrete_ids = plan.discrete_ids
        self.report_bounds_tuple = plan.bounds
        self.n_reported = len(plan.continuous_ids) + len(plan.discrete_ids)
        if self.n_reported == 0:
            return
        cdef int i, j, which
        self.n_report_bounds = len(plan.bounds)
        self.report_bounds = <double*>malloc(max(1, self.n_report_bounds) * sizeof(double))
        if self.report_bounds == NULL:
            raise MemoryError()
        for i, bound in enumerate(plan.bounds):
            self.report_bounds[i] = bound
        # (counted map, tensor its ids are placed in): continuous maps, discrete maps
        for i, (entries, which) in enumerate(((plan.in_continuous_maps, 0), (plan.in_discrete_maps, 2))):
            if not entries:
                continue
            self.report_cols[i] = <int32_t*>malloc(len(entries) * sizeof(int32_t))
            self.report_rows[i] = <int32_t*>malloc(len(entries) * sizeof(int32_t))
            if self.report_cols[i] == NULL or self.report_rows[i] == NULL:
                raise MemoryError()
            slots = dict(placed[which])
            for j, (fid, row) in enumerate(entries):
                self.report_cols[i][j] = slots.get(fid, -1)
                self.report_rows[i][j] = row
                slots[fid] = NAVI_REPORTED + j
            _build_table(&self.report_tables[i], slots)

    def __dealloc__(self):
        cdef int i
        for i in range(3):
            free(self.tables[i].block)
            self.tables[i].block = NULL
        for i in range(2):
            free(self.report_tables[i].block)
            free(self.report_cols[i])
            free(self.report_rows[i])
            self.report_tables[i].block = NULL
            self.report_cols[i] = NULL
            self.report_rows[i] = NULL
        free(self.report_bounds)
        self.report_bounds = NULL

    @property
    def n_report_rows(self):
        """Rows of a ``feature_counts`` array: the continuous ids', then the discrete ids'."""
        return self.n_reported

    def count_rows(self, payloads, int64_t max_rows=1 << 30):
        """Validate every payload and return its number of candidates.

        Parameters
        ----------
        payloads : sequence of bytes
            One serialized BatchPredictionRequest each.
        max_rows : int
            Largest candidate count accepted in one payload.

        Returns
        -------
        numpy.ndarray of int64, one count per payload.

        Raises
        ------
        navi.errors.DecodeError
            The first malformed payload, with its index, byte offset and what
            was being read.
        """
        cdef Py_ssize_t n = len(payloads)
        rows = np.zeros(n, dtype=np.int64)
        if n == 0:
            return rows
        cdef int64_t[::1] rows_view = rows
        cdef BprIndex* index = <BprIndex*>malloc(n * sizeof(BprIndex))
        cdef const uint8_t** data = <const uint8_t**>malloc(n * sizeof(uint8_t*))
        cdef Py_ssize_t* sizes = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        try:
            if index == NULL or data == NULL or sizes == NULL:
                raise MemoryError()
            held = _collect(payloads, data, sizes)
            _index_all(n, data, sizes, index, max_rows)
            for i in range(n):
                rows_view[i] = index[i].rows
        finally:
            free(index)
            free(data)
            free(sizes)
        return rows

    def decode_into(self, payloads, float[:, ::1] continuous, int64_t[:, ::1] binary,
                    int64_t[:, ::1] discrete, embeddings, Py_ssize_t row_start=0,
                    int64_t[:, ::1] feature_counts=None, double[::1] feature_sums=None):
        """Decode ``payloads`` into rows ``row_start...`` of the given arrays.

        Every cell of those rows is written (defaults where a feature is
        absent), so the arrays may come from ``numpy.empty``. Common features
        of a BPR fill all of its rows first; each candidate's own features
        are written after them and win.

        Parameters
        ----------
        payloads : sequence of bytes
        continuous : float32 [rows, width] C-contiguous
        binary, discrete : int64 [rows, width] C-contiguous
        embeddings : sequence of float32 [rows, width] arrays, one per layout embedding
        row_start : first row to write
        feature_counts, feature_sums : int64 [n_report_rows, len(report_bounds) + 1]
            and float64 [n_report_rows], or None (nothing counted)
            Counts of the reported features' values are added into these,
            a row per reported id (the continuous ids', then the discrete
            ids', as ``reported_*_ids``) and a column per bucket (the last
            +Inf), with the sum of the values counted: a common feature's
            value once per BPR, a candidate's once per candidate. After an
            error they are partly added to: discard them.

        Returns
        -------
        int: rows written.
        """
        cdef Py_ssize_t n = len(payloads), i, k, total = 0
        cdef Py_ssize_t n_rows = continuous.shape[0]
        if len(embeddings) != self.n_emb:
            raise ValueError(f"expected {self.n_emb} embedding arrays, got {len(embeddings)}")
        if continuous.shape[1] != self.widths[0] or binary.shape[1] != self.widths[1] or discrete.shape[1] != self.widths[2]:
            raise ValueError("output widths do not match the layout")
        if binary.shape[0] != n_rows or discrete.shape[0] != n_rows:
            raise ValueError("output arrays differ in row count")
        cdef float* emb_base[MAX_EMBEDDINGS]
        cdef float[:, ::1] emb_view
        emb_keep = []
        for k in range(self.n_emb):
            emb_view = embeddings[k]
            if emb_view.shape[1] != self.widths[3 + k] or emb_view.shape[0] != n_rows:
                raise ValueError(f"embedding {k} has shape ({emb_view.shape[0]}, {emb_view.shape[1]}), expected ({n_rows}, {self.widths[3 + k]})")
            emb_keep.append(emb_view)
            emb_base[k] = &emb_view[0, 0] if n_rows > 0 and self.widths[3 + k] > 0 else NULL
        if n == 0:
            return 0
        cdef BprIndex* index = <BprIndex*>malloc(n * sizeof(BprIndex))
        cdef const uint8_t** data = <const uint8_t**>malloc(n * sizeof(uint8_t*))
        cdef Py_ssize_t* sizes = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        cdef Reader r
        cdef Rows tmpl
        cdef char* scratch = NULL
        cdef Py_ssize_t scratch_bytes
        cdef bint stream
        cdef navi_report reports[2]
        cdef navi_report* report_cont = NULL
        cdef navi_report* report_disc = NULL
        if feature_counts is not None and self.n_reported:
            if feature_sums is None:
                raise ValueError("feature_counts needs feature_sums")
            if feature_counts.shape[0] != self.n_reported or feature_counts.shape[1] != self.n_report_bounds + 1 \
                    or feature_sums.shape[0] != self.n_reported:
                raise ValueError(f"feature counts must be ({self.n_reported}, {self.n_report_bounds + 1}) "
                                 f"and sums ({self.n_reported},)")
            for k in range(2):
                reports[k].cols = self.report_cols[k]
                reports[k].rows = self.report_rows[k]
                reports[k].bounds = self.report_bounds
                reports[k].n_bounds = self.n_report_bounds
                reports[k].counts = &feature_counts[0, 0]
                reports[k].sums = &feature_sums[0]
            report_cont = &reports[0] if self.report_tables[0].block != NULL else NULL
            report_disc = &reports[1] if self.report_tables[1].block != NULL else NULL
        try:
            if index == NULL or data == NULL or sizes == NULL:
                raise MemoryError()
            held = _collect(payloads, data, sizes)
            _index_all(n, data, sizes, index, 1 << 30)
            for i in range(n):
                total += index[i].rows
            if row_start < 0 or total > n_rows - row_start:
                raise ValueError(f"{total} rows do not fit at row {row_start} of {n_rows}")
            stream = total * self.row_bytes >= self.stream_min_bytes
            # template rows (one per tensor, sized by the layout, never by the
            # wire), the sparse common list of the continuous row, and the
            # staging row when streaming
            scratch_bytes = self.row_bytes + self.widths[0] * 8 + (self.row_bytes + 64 if stream else 0)
            scratch = <char*>malloc(scratch_bytes + 64)
            if scratch == NULL:
                raise MemoryError()
            self._place_rows(&tmpl, scratch)
            r.err = E_OK
            with nogil:
                self._scatter_all(n, data, sizes, index, &tmpl, &continuous[0, 0] if n_rows else NULL,
                                  &binary[0, 0] if n_rows and self.widths[1] else NULL,
                                  &discrete[0, 0] if n_rows and self.widths[2] else NULL,
                                  emb_base, row_start, stream, report_cont, report_disc, &r)
                if stream:
                    # whatever _scatter_all returned with, no streamed row is
                    # left unordered behind the caller's next read
                    navi_stream_done()
            if r.err != E_OK:
                raise _decode_error(-1, &r)
        finally:
            free(index)
            free(data)
            free(sizes)
            free(scratch)
        return total

    cdef void _scatter_all(self, Py_ssize_t n, const uint8_t** data, Py_ssize_t* sizes,
                           BprIndex* index, Rows* tmpl, float* cont, int64_t* binary,
                           int64_t* disc, float** emb_base, Py_ssize_t row, bint stream,
                           const navi_report* report_cont, const navi_report* report_disc,
                           Reader* r) noexcept nogil:
        cdef Py_ssize_t i, c, k, j
        cdef Py_ssize_t wc = self.widths[0], wb = self.widths[1], wd = self.widths[2]
        cdef Rows out, dest, stage
        # the continuous default: NaN unless the spec's default_value says otherwise
        cdef float nan = self.cont_default
        # The continuous row is the widest: rather than copying a template row
        # (which doubles what must stay in L1 while features are scattered),
        # each row is filled and gets the common features from a sparse list.
        cdef int32_t* common_cols = <int32_t*>(<char*>tmpl.binary + self.row_bytes)
        cdef float* common_vals = <float*>(common_cols + wc)
        cdef Py_ssize_t n_common
        if stream:
            # each row is built in cache and then streamed to its place
            # (64-byte aligned: the scratch before it ends on a 4-byte boundary);
            # a tensor the caller has no output for stays NULL here too
            self._place_rows(&stage, <char*>((<uintptr_t>(common_vals + wc) + 63) & ~(<uintptr_t>63)))
            out.cont = stage.cont
            out.binary = stage.binary if binary != NULL else NULL
            out.disc = stage.disc if disc != NULL else NULL
            for k in range(self.n_emb):
                out.emb[k] = stage.emb[k] if emb_base[k] != NULL else NULL
        for i in range(n):
            r.data = data[i]
            r.end = sizes[i]
            # defaults, then the common features, into the template row
            for j in range(wc):
                tmpl.cont[j] = nan
            memset(tmpl.binary, 0, wb * 8)
            memset(tmpl.disc, 0, wd * 8)
            for k in range(self.n_emb):
                memset(tmpl.emb[k], 0, self.widths[3 + k] * 4)
            if index[i].common_pos >= 0:
                r.pos = index[i].common_pos
                if self._scatter_record(r, tmpl, report_cont, report_disc):
                    return
            n_common = navi_sparse_f32(tmpl.cont, wc, nan, common_cols, common_vals)
            r.pos = index[i].list_pos
            for c in range(index[i].rows):
                dest.cont = cont + row * wc
                dest.binary = binary + row * wb if binary != NULL else NULL
                dest.disc = disc + row * wd if disc != NULL else NULL
                for k in range(self.n_emb):
                    dest.emb[k] = emb_base[k] + row * self.widths[3 + k] if emb_base[k] != NULL else NULL
                if not stream:
                    out = dest
                navi_fill_f32(out.cont, wc, nan)
                navi_put_f32(out.cont, common_cols, common_vals, n_common)
                self._copy_rows(&out, tmpl, False)
                if self._scatter_record(r, &out, report_cont, report_disc):
                    return
                if stream:
                    navi_stream_row(dest.cont, out.cont, wc * 4)
                    self._copy_rows(&dest, &out, True)
                row += 1

    cdef void _place_rows(self, Rows* rows, char* block) noexcept nogil:
        """Lay one row of every tensor out back to back in ``block`` (row_bytes long)."""
        cdef int k
        rows.binary = <int64_t*>block
        rows.disc = rows.binary + self.widths[1]
        rows.cont = <float*>(rows.disc + self.widths[2])
        for k in range(self.n_emb):
            rows.emb[k] = (rows.cont + self.widths[0]) if k == 0 else (rows.emb[k - 1] + self.widths[3 + k - 1])

    cdef inline void _copy_rows(self, Rows* dst, Rows* src, bint stream) noexcept nogil:
        """Copy the binary, discrete and embedding rows of ``src`` to those ``dst`` has (not NULL)."""
        cdef int k
        if dst.binary != NULL:
            _copy_row(dst.binary, src.binary, self.widths[1] * 8, stream)
        if dst.disc != NULL:
            _copy_row(dst.disc, src.disc, self.widths[2] * 8, stream)
        for k in range(self.n_emb):
            if dst.emb[k] != NULL:
                _copy_row(dst.emb[k], src.emb[k], self.widths[3 + k] * 4, stream)

    cdef int _scatter_record(self, Reader* r, Rows* out, const navi_report* report_cont,
                             const navi_report* report_disc) noexcept nogil:
        """Write one DataRecord's known features into ``out``; skip the rest.

        With a report (not NULL) for a kind of map, the reported ids met in
        it are counted as they pass (the original counts them in the same walk).
        """
        cdef int ft, kt, vt, et, k, got
        cdef int16_t fid
        cdef int32_t n, i, col
        cdef Py_ssize_t value_pos
        cdef const uint8_t* p
        cdef int64_t key
        cdef int matches[MAX_EMBEDDINGS]
        cdef int n_matches
        while True:
            got = next_field(r, &ft, &fid)
            if got <= 0:
                return got
            value_pos = r.pos
            if fid == 1 and ft == T_SET and r.end - r.pos >= 5 and r.data[r.pos] == T_I64:
                n = navi_i32(r.data + r.pos + 1)
                if n < 0 or n > (r.end - r.pos - 5) // 8:
                    return fail(r, E_TRUNCATED, r.pos, "binaryFeatures")
                p = r.data + r.pos + 5
                navi_scatter_present(&self.tables[1], p, n, out.binary)
                r.pos += 5 + <Py_ssize_t>n * 8
            elif (fid == 2 or fid == 3) and ft == T_MAP and r.end - r.pos >= 6 and r.data[r.pos] == T_I64 \
                    and r.data[r.pos + 1] == (T_DOUBLE if fid == 2 else T_I64):
                n = navi_i32(r.data + r.pos + 2)
                if n < 0 or n > (r.end - r.pos - 6) // 16:
                    return fail(r, E_TRUNCATED, r.pos, "feature map")
                p = r.data + r.pos + 6
                if fid == 2:
                    if report_cont == NULL:
                        navi_scatter_f32(&self.tables[0], p, n, out.cont)
                    else:
                        navi_scatter_f32_report(&self.report_tables[0], p, n, out.cont, report_cont)
                elif report_disc == NULL:
                    navi_scatter_i64(&self.tables[2], p, n, out.disc)
                else:
                    navi_scatter_i64_report(&self.report_tables[1], p, n, out.disc, report_disc)
                r.pos += 6 + <Py_ssize_t>n * 16
            elif fid == 8 and ft == T_MAP and r.end - r.pos >= 6 and r.data[r.pos] == T_I64 \
                    and r.data[r.pos + 1] == T_STRUCT:
                n = navi_i32(r.data + r.pos + 2)
                if n < 0:
                    return fail(r, E_NEGATIVE, r.pos + 2, "tensors size")
                r.pos += 6
                for i in range(n):
                    if need(r, 8, "tensors key"):
                        return -1
                    key = navi_i64(r.data + r.pos)
                    r.pos += 8
                    n_matches = 0
                    for k in range(self.n_emb):
                        if self.emb_ids[k] == key and out.emb[k] != NULL:
                            matches[n_matches] = k
                            n_matches += 1
                    if n_matches == 0:
                        if skip(r, T_STRUCT, 2):
                            return -1
                    elif self._scatter_tensor(r, out, matches, n_matches):
                        return -1
            elif skip(r, ft, 1):
                return -1

    cdef int _scatter_tensor(self, Reader* r, Rows* out, int* matches, int n_matches) noexcept nogil:
        """A GeneralTensor for embedding(s) ``matches``: zeros, then its floatTensor values."""
        cdef int ft, ft2, m, k, got
        cdef int16_t fid, fid2
        cdef int32_t n, i, count
        cdef Py_ssize_t width
        cdef const uint8_t* p
        for m in range(n_matches):
            k = matches[m]
            memset(out.emb[k], 0, self.widths[3 + k] * 4)
        while True:
            got = next_field(r, &ft, &fid)
            if got <= 0:
                return got
            if not (fid == 5 and ft == T_STRUCT):
                if skip(r, ft, 3):
                    return -1
                continue
            # FloatTensor { 1: list<double> floats }
            while True:
                got = next_field(r, &ft2, &fid2)
                if got < 0:
                    return -1
                if got == 0:
                    break
                if fid2 == 1 and ft2 == T_LIST and r.end - r.pos >= 5 and r.data[r.pos] == T_DOUBLE:
                    n = navi_i32(r.data + r.pos + 1)
                    if n < 0 or n > (r.end - r.pos - 5) // 8:
                        return fail(r, E_TRUNCATED, r.pos, "floatTensor")
                    p = r.data + r.pos + 5
                    for m in range(n_matches):
                        k = matches[m]
                        width = self.widths[3 + k]
                        count = n if n < width else <int32_t>width
                        navi_f64be_to_f32(out.emb[k], p, count)
                    r.pos += 5 + <Py_ssize_t>n * 8
                elif skip(r, ft2, 4):
                    return -1


cdef inline void _copy_row(void* dst, const void* src, size_t nbytes, bint stream) noexcept nogil:
    if stream:
        navi_stream_row(dst, src, nbytes)
    else:
        navi_copy_row(dst, src, nbytes)


cdef _index_all(Py_ssize_t n, const uint8_t** data, Py_ssize_t* sizes, BprIndex* index,
                int64_t max_rows):
    """Validate and index every collected payload; raise the first one's DecodeError."""
    cdef Py_ssize_t i, failed = -1
    cdef Reader r
    r.err = E_OK
    with nogil:
        for i in range(n):
            r.data = data[i]
            r.pos = 0
            r.end = sizes[i]
            if index_bpr(&r, &index[i], max_rows):
                failed = i
                break
    if failed >= 0:
        raise _decode_error(failed, &r)


cdef object _collect(payloads, const uint8_t** data, Py_ssize_t* sizes):
    """Raw pointers of every payload; returns the objects that keep them alive.

    A bytes object is read in place; so is any contiguous byte buffer (a
    memoryview slice of a received request, a bytearray), without a copy.
    """
    cdef Py_ssize_t i = 0
    cdef const uint8_t[::1] view
    held = []
    for item in payloads:
        if PyBytes_Check(item):
            held.append(item)
            data[i] = <const uint8_t*>PyBytes_AS_STRING(item)
            sizes[i] = PyBytes_GET_SIZE(item)
        elif isinstance(item, (bytearray, memoryview, np.ndarray)):
            try:
                view = item
            except (ValueError, TypeError, BufferError):
                # not a flat byte buffer (a strided or typed view): copy it flat
                view = bytes(item)
            held.append(view)
            sizes[i] = view.shape[0]
            data[i] = &view[0] if view.shape[0] else <const uint8_t*>""
        else:
            raise TypeError(f"payload {i} is {type(item).__name__}, expected bytes")
        i += 1
    return held


cdef object _decode_error(Py_ssize_t index, Reader* r):
    reason = ERROR_REASONS.get(r.err, "malformed input")
    what = r.what.decode() if r.what != NULL else ""
    if index >= 0:
        reason = f"payload {index}: {reason}"
    return DecodeError(reason, r.err_pos, what)
