"""Two builds of the BPR decoder, timed alternately in one process.

Run-to-run speed on a shared machine moves by tens of percent, more than most
changes to the decoder are worth; two builds timed in alternation within one
process see the same moments. Each side is ``navi/_fast/_bpr.pyx`` at a git
revision (or a .pyx file path) with the C headers beside it (``bpr_kernels.h``
where that revision has it), compiled as the package's setup.py compiles it
into a module of its own in a scratch directory. Every round times each
side once (the order alternates); the result is the per-round ratio B/A of
candidates per second, median, min and max.

    python benchmarks/ab_decoder.py HEAD~1 HEAD [--shape per-request|one-output] \\
        [--threads 1|2] [--seconds 20] [--bprs 20]

``per-request`` converts one BPR per call into a reused 100-row buffer (the
server's shape); ``one-output`` converts all BPRs in one call into one output
(2,000 home rows, 54 MB). With ``--threads 2`` two threads convert the two
halves at once, each into its own output.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
DECODER = "navi/_fast/_bpr.pyx"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def source_of(side: str) -> tuple[str, dict[str, str]]:
    """The decoder of ``side`` (a .pyx path, or a git revision of this repository):
    its .pyx text and the C headers (name -> text) in its folder."""
    path = Path(side)
    if path.suffix == ".pyx" and path.is_file():
        return path.read_text(), {h.name: h.read_text() for h in path.parent.glob("*.h")}
    folder = str(Path(DECODER).parent)
    headers = [name for name in git("ls-tree", "--name-only", f"{side}:{folder}").split() if name.endswith(".h")]
    return git("show", f"{side}:{DECODER}"), {name: git("show", f"{side}:{folder}/{name}") for name in headers}


def build(sources: dict[str, tuple[str, dict[str, str]]], directory: Path) -> None:
    """Compile each module name -> (source, headers) into ``directory``, with setup.py's settings.

    Each module's source and headers go in a folder of their own, so two
    revisions' headers of one name never meet."""
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension
    from setuptools import setup as setuptools_setup

    for name, (text, headers) in sources.items():
        (directory / name).mkdir()
        (directory / name / f"{name}.pyx").write_text(text)
        for header, header_text in headers.items():
            (directory / name / header).write_text(header_text)
    extensions = [Extension(name, [str(directory / name / f"{name}.pyx")], include_dirs=[numpy.get_include()],
                            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                            extra_compile_args=["-O3", "-Wall", "-Wextra"]) for name in sources]
    directives = {"language_level": 3, "boundscheck": False, "wraparound": False, "initializedcheck": False,
                  "cdivision": True, "nonecheck": False}
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            setuptools_setup(ext_modules=cythonize(extensions, compiler_directives=directives, quiet=True),
                             script_args=["build_ext", "--build-lib", str(directory), "--build-temp",
                                          str(directory / "tmp"), "-q"])
    except BaseException:
        print(log.getvalue(), file=sys.stderr)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="git revision or .pyx file (the baseline)")
    parser.add_argument("b", help="git revision or .pyx file (the candidate)")
    parser.add_argument("--shape", choices=("per-request", "one-output"), default="per-request")
    parser.add_argument("--threads", type=int, choices=(1, 2), default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--bprs", type=int, default=20, help="generated home BPRs of 100 candidates")
    args = parser.parse_args()

    from navi.segdense import load_layout
    from navi.workload import home_layout_files, make_bprs

    scratch = Path(tempfile.mkdtemp(prefix="navi-ab-"))
    build({"bpr_side_a": source_of(args.a), "bpr_side_b": source_of(args.b)}, scratch)
    sys.path.insert(0, str(scratch))
    layout = load_layout(*home_layout_files(scratch / "spec"))
    payloads = make_bprs(layout, args.bprs, 100, seed=0)
    half = len(payloads) // 2
    parts = [payloads] if args.threads == 1 else [payloads[:half], payloads[half:]]

    def outputs(rows: int):
        out = layout.allocate(rows)
        return out["continuous"], out["binary"], out["discrete"], [out[t.name] for t in layout.tensors[3:]]

    decoders = {side: importlib.import_module(f"bpr_side_{side}").BprDecoder(layout) for side in "ab"}
    rows = [100 if args.shape == "per-request" else 100 * len(part) for part in parts]
    buffers = {side: [outputs(r) for r in rows] for side in "ab"}

    def convert(decoder, part, buffer) -> None:
        if args.shape == "per-request":
            for payload in part:
                decoder.decode_into([payload], *buffer)
        else:
            decoder.decode_into(part, *buffer)

    with ThreadPoolExecutor(max_workers=2) as pool:
        def one_pass(side: str) -> float:
            began = time.perf_counter()
            for future in [pool.submit(convert, decoders[side], part, buffer)
                           for part, buffer in zip(parts, buffers[side])]:
                future.result()
            return time.perf_counter() - began

        for side in "ab":
            one_pass(side)  # first-touch page faults
        seconds: dict[str, list[float]] = {"a": [], "b": []}
        rounds = 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            for side in ("ab" if rounds % 2 == 0 else "ba"):
                seconds[side].append(min(one_pass(side) for _ in range(3)))
            rounds += 1
    candidates = 100 * len(payloads)
    for side, name in (("a", args.a), ("b", args.b)):
        print(f"{side} {name}: {candidates / statistics.median(seconds[side]):,.0f} candidates/s median, "
              f"{candidates / min(seconds[side]):,.0f} best")
    ratios = [ta / tb for ta, tb in zip(seconds["a"], seconds["b"])]
    print(f"B/A candidates/s per round ({args.shape}, {args.threads} thread(s), {rounds} rounds): "
          f"median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
