"""The decoder's C kernels (navi/_fast/bpr_kernels.h) compile alone, warning-free."""
from __future__ import annotations

import re
import shlex
import subprocess
import sysconfig
from pathlib import Path

import navi._fast

FAST = Path(navi._fast.__file__).parent


def declared_kernels() -> list[str]:
    """The names _bpr.pyx declares from the header (its ``cdef extern from`` block)."""
    source = (FAST / "_bpr.pyx").read_text()
    block = re.search(r'^cdef extern from "bpr_kernels\.h":\n((?:    .*\n|\n)+?)(?=\S)', source, re.M)
    assert block, "_bpr.pyx no longer declares its kernels from bpr_kernels.h"
    return sorted(set(re.findall(r"\b(navi_\w+)\(", block.group(1))))


def test_the_kernels_compile_alone_with_every_warning_an_error(tmp_path):
    """Our C, seen by the compiler as C: -Wall -Wextra -Werror at -O2 (where the
    flow-based warnings run), with the compiler the extensions are built with.

    Every function the decoder declares is referenced, so a declaration the
    header lost fails here, and no kernel is reported unused."""
    kernels = declared_kernels()
    assert "navi_scatter_f32" in kernels and "navi_table_build" in kernels, kernels
    source = tmp_path / "kernels.c"
    source.write_text('#include "bpr_kernels.h"\n'
                      "void (*const navi_kernels_used[])(void) = {\n"
                      + "".join(f"    (void (*)(void)){name},\n" for name in kernels)
                      + "};\nconst int navi_reported = NAVI_REPORTED;\n")
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    result = subprocess.run([*compiler, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{FAST}",
                             "-c", str(source), "-o", str(tmp_path / "kernels.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr



ROW_KERNELS_PROGRAM = r"""
#include "bpr_kernels.h"
#include <stdio.h>

/* Rows at every 4-byte offset, as the decoder's rows lie (an embedding row
   of an odd width starts 4 bytes off an 8-byte boundary), each copied,
   filled and streamed, then compared with what memcpy would have made. */
int main(void) {
    static uint64_t src_words[64], dst_words[64], want_words[64];
    unsigned char* src = (unsigned char*)src_words;
    for (size_t i = 0; i < sizeof src_words; i++) src[i] = (unsigned char)(i * 7 + 1);
    for (size_t offset = 0; offset < 16; offset += 4) {
        for (size_t nbytes = 4; nbytes <= 400; nbytes += 4) {
            unsigned char* dst = (unsigned char*)dst_words + offset;
            memset(dst_words, 0, sizeof dst_words);
            navi_copy_row(dst, src + offset, nbytes);
            if (memcmp(dst, src + offset, nbytes)) { printf("copy_row %zu@%zu\n", nbytes, offset); return 1; }
            memset(dst_words, 0, sizeof dst_words);
            navi_stream_row(dst, src + offset, nbytes);
            navi_stream_done();
            if (memcmp(dst, src + offset, nbytes)) { printf("stream_row %zu@%zu\n", nbytes, offset); return 1; }
            navi_fill_f32((float*)dst, (ptrdiff_t)(nbytes / 4), -1.5f);
            for (size_t j = 0; j < nbytes / 4; j++) {
                float f = -1.5f;
                memcpy((unsigned char*)want_words + 4 * j, &f, 4);
            }
            if (memcmp(dst, want_words, nbytes)) { printf("fill_f32 %zu@%zu\n", nbytes, offset); return 1; }
        }
    }
    return 0;
}
"""


def test_the_row_kernels_are_clean_under_asan_and_ubsan(tmp_path):
    """Regression: navi_copy_row read 8-byte words from rows only 4-byte aligned
    (undefined behaviour, found by `make fuzz-native`'s UBSan build). The row
    kernels now run on rows at every 4-byte offset with every sanitizer
    report fatal."""
    program = tmp_path / "rows.c"
    program.write_text(ROW_KERNELS_PROGRAM)
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    binary = tmp_path / "rows"
    built = subprocess.run([*compiler, "-O2", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                            f"-I{FAST}", str(program), "-o", str(binary)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120,
                         env={"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
