#!/bin/sh
# Coverage-guided fuzzing of navi/_fast's compiled decoder and scanner under
# AddressSanitizer + UndefinedBehaviorSanitizer (`make fuzz-native`).
#
#   tests/fuzz/native.sh [RUNS]     RUNS executions in total (default 10000000)
#
# Needs: clang (installed with apt-get when missing), atheris (pip-installed
# into build/fuzz-native/site, not into the environment), and the Python that
# builds navi (PYTHON, default python3, with Cython and numpy). Everything it
# builds and finds stays under build/fuzz-native/: a copy of the package whose
# extensions are built with clang -fsanitize=address,undefined,fuzzer-no-link
# (the checkout's own extensions are left as they are), the seed corpus, the
# corpus the run grows, and crash artifacts. Inputs that once found a bug are
# kept in tests/fuzz/regressions/ and seed every run. Exits non-zero on any
# finding.
set -eu
RUNS=${1:-10000000}
PYTHON=${PYTHON:-python3}
ATHERIS=atheris==3.0.0
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$ROOT/build/fuzz-native

if ! command -v clang >/dev/null 2>&1; then
    apt-get update -q && apt-get install -y -q clang
fi
if [ ! -d "$WORK/site/atheris" ]; then
    "$PYTHON" -m pip install -q --disable-pip-version-check --target "$WORK/site" "$ATHERIS"
fi

# The package, copied, with its extensions built instrumented. libFuzzer's
# runtime and the sanitizers' come from atheris's asan_with_fuzzer.so, which
# carries UBSan's handlers too; -fno-sanitize-recover makes any UB report fatal.
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
cp -r "$ROOT/navi" "$ROOT/setup.py" "$ROOT/README.md" "$WORK/src/"
[ -d "$ROOT/protos" ] && cp -r "$ROOT/protos" "$WORK/src/"
[ -d "$ROOT/thrift" ] && cp -r "$ROOT/thrift" "$WORK/src/"
find "$WORK/src/navi" \( -name '*.so' -o -name '_*.c' -o -name __pycache__ \) -prune -exec rm -rf {} +
SANITIZE="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all -fno-omit-frame-pointer"
(cd "$WORK/src" \
    && "$PYTHON" setup.py -q build_py --build-lib "$WORK/src/build/lib" >/dev/null \
    && CC=clang LDSHARED="clang -shared" CFLAGS="$SANITIZE" LDFLAGS="-fsanitize=address,undefined" \
       "$PYTHON" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1) \
    || { cat "$WORK/build.log"; exit 1; }

RUNTIME=$(PYTHONPATH="$WORK/site" "$PYTHON" -c "import atheris; print(atheris.path())")/asan_with_fuzzer.so
[ -f "$RUNTIME" ] || RUNTIME=$WORK/site/asan_with_fuzzer.so
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
LD_PRELOAD="$RUNTIME" PYTHONPATH="$WORK/src:$WORK/site" \
    "$PYTHON" "$ROOT/tests/fuzz/fuzz_native.py" --write-seeds "$WORK/seeds"
mkdir -p "$WORK/corpus" "$WORK/crashes"

# PYTHONMALLOC=malloc: every Python object from malloc, where ASan sees its
# bounds (pymalloc's arenas would hide them). Leaks are not checked: the
# interpreter keeps its own until exit.
echo "fuzz-native: $RUNS executions, seeds in $WORK/seeds, corpus $WORK/corpus"
started=$(date +%s)
status=0
LD_PRELOAD="$RUNTIME" PYTHONMALLOC=malloc PYTHONPATH="$WORK/src:$WORK/site" NAVI_FUZZ_BUILD="$WORK/src/" \
    "$PYTHON" "$ROOT/tests/fuzz/fuzz_native.py" -runs="$RUNS" -seed=20261206 -max_len=16384 \
    -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$WORK/crashes/" \
    "$WORK/corpus" "$WORK/seeds" "$ROOT/tests/fuzz/regressions" || status=$?
echo "fuzz-native: exit $status after $(( $(date +%s) - started )) s;" \
    "corpus $(ls "$WORK/corpus" | wc -l) inputs; crashes: $(ls "$WORK/crashes" | wc -l)"
exit $status
