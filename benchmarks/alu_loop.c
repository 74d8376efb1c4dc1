/* The register-only control of the converter scaling benchmarks (benchmarks/cores.py).

   Eight chains, each fed by its neighbour: enough independent integer work to
   keep a core's ALUs busy, so a thread sharing the physical core slows it (one
   dependent chain would not notice). The empty asm keeps the compiler from
   folding or vectorising the loop. */
#include <stdint.h>

uint64_t navi_alu_loop(long iterations) {
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
