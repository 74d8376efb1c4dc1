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

