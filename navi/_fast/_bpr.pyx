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

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline int64_t navi_i64(const uint8_t* p) {
        uint64_t v; memcpy(&v, p, 8); return (int64_t)__builtin_bswap64(v);
    }
    static inline int32_t navi_i32(const uint8_t* p) {
        uint32_t v; memcpy(&v, p, 4); return (int32_t)__builtin_bswap32(v);
    }
    static inline int16_t navi_i16(const uint8_t* p) {
        uint16_t v; memcpy(&v, p, 2); return (int16_t)__builtin_bswap16(v);
    }
    static inline double navi_f64(const uint8_t* p) {
        uint64_t v; double d; memcpy(&v, p, 8); v = __builtin_bswap64(v); memcpy(&d, &v, 8); return d;
    }
    """
    int64_t navi_i64(const uint8_t* p) nogil
    int32_t navi_i32(const uint8_t* p) nogil
    int16_t navi_i16(const uint8_t* p) nogil

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

cdef extern from *:
    """
    #include <stdlib.h>
    /* Feature id -> column table: a perfect hash (hash and displace, as in
       CHD), built once per layout. The ids are all known when the layout
       loads, so each gets a slot of its own and a lookup is one multiply,
       one read of its group's displacement and one compare of the slot's
       key: no probing and no data-dependent branch. For 2000 ids the keys,
       columns and displacements take 26 KB, about what L1 holds; the
       bucketed open-addressing table it replaced took 64 KB, and its lookups
       missing L1 were most of the conversion time (measured: 1.3-1.6x the
       candidates/s with this table). */
    typedef struct {
        int64_t* keys;       /* slot -> id; 0 in an empty slot, whose column is -1 */
        int32_t* cols;       /* slot -> column, -1 = no column */
        uint32_t* disp;      /* group -> displacement XORed into the slot */
        uint64_t mult;       /* odd multiplier of this table's hash */
        uint32_t mask;       /* slots - 1 */
        int group_shift;     /* 64 - log2(groups) */
        void* block;         /* the one allocation behind the three arrays */
    } navi_table;

    /* Folding the high half in before the multiply makes the product's
       high half (where the group and the slot come from) depend on every bit
       of the id, so ids that differ only in high bits (k << 40) spread too;
       a second multiply would cost ~4% of the conversion. */
    static inline uint64_t navi_mix(uint64_t key, uint64_t mult) {
        return (key ^ (key >> 32)) * mult;
    }

    static inline int32_t navi_lookup(const navi_table* t, int64_t key) {
        uint64_t h = navi_mix((uint64_t)key, t->mult);
        uint32_t slot = ((uint32_t)(h >> 32) ^ t->disp[h >> t->group_shift]) & t->mask;
        return t->keys[slot] == key ? t->cols[slot] : -1;
    }

    static uint64_t navi_splitmix64(uint64_t x) {
        x += 0x9E3779B97F4A7C15ULL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
        return x ^ (x >> 31);
    }

    /* One try at placing n distinct ids with multiplier `mult` into 2^slot_bits
       slots: 0 placed, 1 this multiplier cannot (two ids of one group share
       their low hash bits, or no displacement fits a group), -1 no memory.
       Groups are placed largest first, each at the first displacement whose
       slots are all free. */
    static int navi_table_try(navi_table* t, const int64_t* ids, const int32_t* cols, Py_ssize_t n,
                              int slot_bits, int group_bits, uint64_t mult) {
        size_t slots = (size_t)1 << slot_bits, groups = (size_t)1 << group_bits;
        size_t keys_bytes = slots * 8, cols_bytes = (slots * 4 + 63) & ~(size_t)63;
        size_t disp_bytes = (groups * 4 + 63) & ~(size_t)63;
        void* block = NULL;
        if (posix_memalign(&block, 64, keys_bytes + cols_bytes + disp_bytes)) return -1;
        int64_t* keys = (int64_t*)block;
        int32_t* tcols = (int32_t*)((char*)block + keys_bytes);
        uint32_t* disp = (uint32_t*)((char*)block + keys_bytes + cols_bytes);
        uint32_t* group_of = (uint32_t*)malloc((n + 1) * sizeof(uint32_t));
        uint32_t* low = (uint32_t*)malloc((n + 1) * sizeof(uint32_t));
        uint32_t* members = (uint32_t*)malloc((n + 1) * sizeof(uint32_t));
        uint32_t* start = (uint32_t*)calloc(groups + 1, sizeof(uint32_t));
        uint32_t* fill = (uint32_t*)calloc(groups, sizeof(uint32_t));
        unsigned char* used = (unsigned char*)calloc(slots, 1);
        int result = 0;
        if (!group_of || !low || !members || !start || !fill || !used) { result = -1; goto done; }
        memset(keys, 0, keys_bytes);
        for (size_t s = 0; s < slots; s++) tcols[s] = -1;
        memset(disp, 0, disp_bytes);
        uint32_t largest = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t h = navi_mix((uint64_t)ids[i], mult);
            group_of[i] = (uint32_t)(h >> (64 - group_bits));
            low[i] = (uint32_t)(h >> 32) & (uint32_t)(slots - 1);
            start[group_of[i] + 1]++;
        }
        for (size_t g = 0; g < groups; g++) {
            if (start[g + 1] > largest) largest = start[g + 1];
            start[g + 1] += start[g];
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t g = group_of[i];
            members[start[g] + fill[g]++] = (uint32_t)i;
        }
        for (uint32_t size = largest; size > 0 && result == 0; size--) {
            for (size_t g = 0; g < groups && result == 0; g++) {
                if (start[g + 1] - start[g] != size) continue;
                const uint32_t* m = members + start[g];
                for (uint32_t a = 0; a < size && result == 0; a++)
                    for (uint32_t b = a + 1; b < size; b++)
                        if (low[m[a]] == low[m[b]]) { result = 1; break; }
                if (result) break;
                size_t d;
                for (d = 0; d < slots; d++) {
                    uint32_t a;
                    for (a = 0; a < size; a++)
                        if (used[low[m[a]] ^ d]) break;
                    if (a == size) break;
                }
                if (d == slots) { result = 1; break; }
                disp[g] = (uint32_t)d;
                for (uint32_t a = 0; a < size; a++) {
                    size_t slot = low[m[a]] ^ d;
                    used[slot] = 1;
                    keys[slot] = ids[m[a]];
                    tcols[slot] = cols[m[a]];
                }
            }
        }
    done:
        free(group_of); free(low); free(members); free(start); free(fill); free(used);
        if (result != 0) { free(block); return result; }
        t->keys = keys; t->cols = tcols; t->disp = disp; t->mult = mult;
        t->mask = (uint32_t)(slots - 1); t->group_shift = 64 - group_bits; t->block = block;
        return 0;
    }

    /* Build the table of n distinct ids: as few slots as hold them (about
       four ids a group), more slots only when 64 multipliers all fail.
       0 built, -1 no memory. */
    static int navi_table_build(navi_table* t, const int64_t* ids, const int32_t* cols, Py_ssize_t n) {
        int slot_bits = 0;
        while (((Py_ssize_t)1 << slot_bits) < n) slot_bits++;
        for (; slot_bits < 32; slot_bits++) {
            int group_bits = slot_bits > 3 ? slot_bits - 2 : 1;
            for (uint64_t attempt = 0; attempt < 64; attempt++) {
                int got = navi_table_try(t, ids, cols, n, slot_bits, group_bits,
                                         navi_splitmix64(attempt) | 1);
                if (got <= 0) return got;
            }
        }
        return -1;
    }

    /* The cells of a template row that differ (bitwise) from the fill value:
       the common features as a sparse list, at most width entries. */
    static Py_ssize_t navi_sparse_f32(const float* row, Py_ssize_t width, float fill, int32_t* cols, float* vals) {
        uint32_t fill_bits, bits;
        Py_ssize_t n = 0;
        memcpy(&fill_bits, &fill, 4);
        for (Py_ssize_t j = 0; j < width; j++) {
            memcpy(&bits, row + j, 4);
            if (bits != fill_bits) { cols[n] = (int32_t)j; vals[n] = row[j]; n++; }
        }
        return n;
    }

    /* The fill of every continuous row (NaN, ~21 KB a row): where wchar_t is
       32 bits, glibc's wmemset, which picks an AVX2/AVX-512 loop for this CPU
       at load time, while our own loop is compiled for the SSE2 baseline.
       Measured in a same-process A/B: 1.00x-1.08x the candidates/s into a big
       output, 1.02x-1.09x one request at a time; the same bits either way. */
    #include <wchar.h>
    static void navi_fill_f32(float* dst, Py_ssize_t width, float fill) {
        uint32_t bits;
        memcpy(&bits, &fill, 4);
        if (sizeof(wchar_t) == 4) {
            wmemset((wchar_t*)dst, (wchar_t)bits, (size_t)width);
            return;
        }
        for (Py_ssize_t j = 0; j < width; j++) dst[j] = fill;
    }

    static void navi_put_f32(float* dst, const int32_t* cols, const float* vals, Py_ssize_t n) {
        for (Py_ssize_t j = 0; j < n; j++) dst[cols[j]] = vals[j];
    }

    /* Row copy that keeps the destination in cache. glibc's memcpy may use
       cache-bypassing string stores for rows this size, and then every
       scattered feature store that follows misses; a plain vectorised loop
       (kept from being turned back into a memcpy call) does not. */
    __attribute__((optimize("no-tree-loop-distribute-patterns")))
    static void navi_copy_row(void* restrict dst, const void* restrict src, size_t nbytes) {
        uint64_t* d = (uint64_t*)dst;
        const uint64_t* s = (const uint64_t*)src;
        size_t n = nbytes / 8, i;
        for (i = 0; i < n; i++) d[i] = s[i];
        if (nbytes & 7) memcpy((char*)dst + n * 8, (const char*)src + n * 8, nbytes & 7);
    }

    /* One loop for every id -> column scatter: entries of STRIDE bytes,
       each an i64 id first; VALUE(entry) is what lands in the id's column.
       Unknown ids store into a dummy. The compiler keeps the id compare
       as a branch, which lets the store's address be speculated; a forced
       branch-free select measured slower (0.86x-0.92x). The table is read
       through a local copy: a store through dst might otherwise alias it,
       and the compiler reloaded its column array every entry (measured:
       1.03x per request). Each entry prefetches the input 512 bytes on:
       the hardware prefetcher stops at every 4 KB page of the request's
       bytes, and this keeps the walk fed across them (1.04x per request
       on one thread and on two, 1.01x-1.04x into one big output). A
       prefetch never faults and its data is never used, so past the end
       of the input it reads nothing; the address is formed as an integer,
       not as a pointer past the end. */
    #define NAVI_DEFINE_SCATTER(NAME, T, STRIDE, VALUE)                                   \
        static void NAME(const navi_table* t, const uint8_t* p, int32_t n, T* dst) {      \
            T dummy;                                                                      \
            const navi_table table = *t;                                                  \
            for (int32_t i = 0; i < n; i++) {                                             \
                const uint8_t* entry = p + (STRIDE) * i;                                  \
                __builtin_prefetch((const void*)((uintptr_t)entry + 512));                \
                int32_t col = navi_lookup(&table, navi_i64(entry));                       \
                T* target = col >= 0 ? dst + col : &dummy;                                \
                *target = VALUE(entry);                                                   \
            }                                                                             \
        }
    #define NAVI_F64_VALUE(entry) ((float)navi_f64((entry) + 8))
    #define NAVI_I64_VALUE(entry) navi_i64((entry) + 8)
    #define NAVI_PRESENT_VALUE(entry) 1
    /* map<i64, double> -> float columns; map<i64, i64> -> int64; set<i64> -> 1 */
    NAVI_DEFINE_SCATTER(navi_scatter_f32, float, 16, NAVI_F64_VALUE)
    NAVI_DEFINE_SCATTER(navi_scatter_i64, int64_t, 16, NAVI_I64_VALUE)
    NAVI_DEFINE_SCATTER(navi_scatter_present, int64_t, 8, NAVI_PRESENT_VALUE)

    /* Reported features (--onnx-report-*-feature-ids): their values are
       counted into histogram buckets as the scatter passes them. A decoder
       with reported ids keeps a second table of the same ids plus the
       reported ones, where a reported id's slot holds NAVI_REPORTED + its
       index here instead of a column; only a call that counts uses it, with
       the scatter variants below, so a call that does not count runs the
       loops above unchanged. Columns stay below NAVI_REPORTED (checked when
       the layout loads). */
    #define NAVI_REPORTED 0x40000000
    typedef struct {
        const int32_t* cols;   /* reported index -> its column in this tensor, -1 = none */
        const int32_t* rows;   /* reported index -> its row of counts */
        const double* bounds;  /* bucket upper bounds, ascending, finite */
        int32_t n_bounds;
        int64_t* counts;       /* [rows][n_bounds + 1]: a count per bucket, the last +Inf */
        double* sums;          /* [rows]: sum of the values counted */
    } navi_report;

    /* Count one value in the first bucket whose upper bound is >= it, as a
       Prometheus histogram's observe does: a value above every bound, +Inf
       and NaN (no bound is >= NaN) land in the +Inf bucket, and a NaN makes
       the sum NaN (as the Go and Rust clients; prometheus-client would count
       no bucket). Returns the id's column (-1 = none). Kept out of the loop:
       it runs only for a reported id. */
    static __attribute__((noinline, cold)) int32_t navi_observe(const navi_report* rep, int32_t j, double v) {
        int32_t lo = 0, hi = rep->n_bounds, row = rep->rows[j];
        while (lo < hi) {
            int32_t mid = (lo + hi) >> 1;
            if (v <= rep->bounds[mid]) hi = mid; else lo = mid + 1;
        }
        rep->counts[(int64_t)row * (rep->n_bounds + 1) + lo] += 1;
        rep->sums[row] += v;
        return rep->cols[j];
    }

    /* The scatter loop of NAVI_DEFINE_SCATTER plus one compare: a slot of a
       reported id (>= NAVI_REPORTED) is counted and then stored like any
       other. The branch is almost never taken and predicted so. */
    #define NAVI_DEFINE_SCATTER_REPORT(NAME, T, STRIDE, VALUE, OBSERVED)                                \
        static void NAME(const navi_table* t, const uint8_t* p, int32_t n, T* dst,                    \
                         const navi_report* rep) {                                                    \
            T dummy;                                                                                  \
            const navi_table table = *t;                                                              \
            for (int32_t i = 0; i < n; i++) {                                                         \
                const uint8_t* entry = p + (STRIDE) * i;                                              \
                __builtin_prefetch((const void*)((uintptr_t)entry + 512));                            \
                int32_t col = navi_lookup(&table, navi_i64(entry));                                   \
                if (__builtin_expect(col >= NAVI_REPORTED, 0))                                        \
                    col = navi_observe(rep, col - NAVI_REPORTED, OBSERVED(entry));                    \
                T* target = col >= 0 ? dst + col : &dummy;                                            \
                *target = VALUE(entry);                                                               \
            }                                                                                         \
        }
    #define NAVI_F64_OBSERVED(entry) navi_f64((entry) + 8)
    #define NAVI_I64_OBSERVED(entry) ((double)navi_i64((entry) + 8))
    NAVI_DEFINE_SCATTER_REPORT(navi_scatter_f32_report, float, 16, NAVI_F64_VALUE, NAVI_F64_OBSERVED)
    NAVI_DEFINE_SCATTER_REPORT(navi_scatter_i64_report, int64_t, 16, NAVI_I64_VALUE, NAVI_I64_OBSERVED)

    #if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
    #include <emmintrin.h>
    #define NAVI_HAVE_SSE2 1
    #endif

    /* Copy a finished row out with streaming (non-temporal) stores: into an
       output far larger than the cache, a plain store first reads each line
       from memory (read for ownership) only to overwrite it, and that read
       is what two threads converting at once compete for. Rows are whole
       4-byte cells. Without SSE2 (other architectures) a plain copy. */
    static void navi_stream_row(void* dst, const void* src, size_t nbytes) {
    #ifndef NAVI_HAVE_SSE2
        memcpy(dst, src, nbytes);
    #else
        char* d = (char*)dst;
        const char* s = (const char*)src;
        int cell;
        for (; ((uintptr_t)d & 15) && nbytes >= 4; d += 4, s += 4, nbytes -= 4) {
            memcpy(&cell, s, 4);
            _mm_stream_si32((int*)d, cell);
        }
        for (; nbytes >= 64; d += 64, s += 64, nbytes -= 64) {
            __m128i a = _mm_loadu_si128((const __m128i*)s), b = _mm_loadu_si128((const __m128i*)(s + 16));
            __m128i c = _mm_loadu_si128((const __m128i*)(s + 32)), e = _mm_loadu_si128((const __m128i*)(s + 48));
            _mm_stream_si128((__m128i*)d, a);
            _mm_stream_si128((__m128i*)(d + 16), b);
            _mm_stream_si128((__m128i*)(d + 32), c);
            _mm_stream_si128((__m128i*)(d + 48), e);
        }
        for (; nbytes >= 4; d += 4, s += 4, nbytes -= 4) {
            memcpy(&cell, s, 4);
            _mm_stream_si32((int*)d, cell);
        }
        if (nbytes) memcpy(d, s, nbytes);
    #endif
    }
    /* Streaming stores are weakly ordered: fence them before the caller
       (or another thread) reads the output. */
    static void navi_stream_done(void) {
    #ifdef NAVI_HAVE_SSE2
        _mm_sfence();
    #endif
    }

    /* Big-endian doubles to floats (an embedding's list<double>). Built
       twice where the compiler and libc can pick at load time: an AVX2
       clone, which byte-swaps and converts four values at a time, and the
       baseline. Measured: 1.07x-1.08x candidates/s per request, 1.04x
       into a big output; the same bits (both round to nearest). */
    #if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
    #if __has_attribute(target_clones)
    #define NAVI_CLONES __attribute__((target_clones("avx2", "default")))
    #endif
    #endif
    #ifndef NAVI_CLONES
    #define NAVI_CLONES
    #endif
    NAVI_CLONES
    static void navi_f64be_to_f32(float* restrict dst, const uint8_t* restrict src, int32_t n) {
        for (int32_t i = 0; i < n; i++) {
            uint64_t v;
            double d;
            memcpy(&v, src + 8 * (size_t)i, 8);
            v = __builtin_bswap64(v);
            memcpy(&d, &v, 8);
            dst[i] = (float)d;
        }
    }
    """
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
