# cython: language_level=3
"""Compiled twin of ``navi._fast._cores_ref``: a register-only loop that measures the cores.

``navi bench convert`` times it on one thread and on two in the same rounds as
the converter, so a two-thread ratio can be read against what the machine's
cores give code that shares nothing (no memory, no locks): on a shared VM a
vCPU's speed moves with what runs on the other half of its physical core.
"""
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    /* Eight chains, each fed by its neighbour: enough independent integer work
       to keep a core's ALUs busy, so a thread sharing the physical core slows
       it (one dependent chain would not notice). The empty asm keeps the
       compiler from folding or vectorising the loop. */
    static uint64_t navi_alu_loop(long iterations) {
        uint64_t a0 = 1, a1 = 2, a2 = 3, a3 = 4, a4 = 5, a5 = 6, a6 = 7, a7 = 8;
        for (long i = 0; i < iterations; i++) {
    #if defined(__GNUC__)
            __asm__ volatile("" : "+r"(a0), "+r"(a1), "+r"(a2), "+r"(a3),
                                  "+r"(a4), "+r"(a5), "+r"(a6), "+r"(a7));
    #endif
            a0 += a1; a1 ^= a2; a2 += a3; a3 ^= a4; a4 += a5; a5 ^= a6; a6 += a7; a7 ^= a0;
        }
        return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    }
    """
    uint64_t navi_alu_loop(long iterations) nogil


def alu_loop(long iterations) -> int:
    """Run the loop ``iterations`` times without the GIL; its checksum (as the reference's)."""
    cdef uint64_t checksum
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    with nogil:
        checksum = navi_alu_loop(iterations)
    return checksum
