"""Build script for navi.

Compiles the Cython hot paths in ``navi/_fast`` and generates the gRPC/protobuf
modules in ``navi/_proto`` from ``protos/`` at build time (the generated code is
never committed).  ``NAVI_CYTHON_DEBUG=1`` turns Cython bounds checks back on.
"""
import os
import re
import runpy
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_SRC = ROOT / "protos"
PROTO_OUT = ROOT / "navi" / "_proto"
# Top-level proto packages we generate; their imports are rewritten to live under
# navi._proto so they never shadow the real `tensorflow` package.
PROTO_ROOTS = ("tensorflow", "tensorflow_serving", "kserve")


def generate_protos() -> None:
    """Run grpc_tools.protoc over protos/ and make the output a navi subpackage."""
    from grpc_tools import protoc
    import grpc_tools

    proto_files = sorted(str(p.relative_to(PROTO_SRC)) for p in PROTO_SRC.rglob("*.proto"))
    if not proto_files:
        return
    PROTO_OUT.mkdir(parents=True, exist_ok=True)
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_SRC}",
        f"-I{well_known}",
        f"--python_out={PROTO_OUT}",
        f"--pyi_out={PROTO_OUT}",
        f"--grpc_python_out={PROTO_OUT}",
        *proto_files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + " ".join(proto_files))
    pattern = re.compile(r"^(from|import) (%s)([.\s])" % "|".join(PROTO_ROOTS), re.M)
    for generated in PROTO_OUT.rglob("*.py"):
        text = generated.read_text()
        fixed = pattern.sub(r"\1 navi._proto.\2\3", text)
        # Build into navi._proto.POOL, not the default pool, where TensorFlow
        # registers its own files of the same names (see navi/_proto/__init__.py).
        fixed = fixed.replace(
            "_descriptor_pool.Default().AddSerializedFile(",
            "__import__('navi._proto', fromlist=['POOL']).POOL.AddSerializedFile(",
        )
        if fixed != text:
            generated.write_text(fixed)
    for directory in [PROTO_OUT, *[d for d in PROTO_OUT.rglob("*") if d.is_dir()]]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")


def copy_idl() -> None:
    """Ship thrift/*.thrift inside the package (navi/_idl) for non-editable installs."""
    target = ROOT / "navi" / "_idl"
    target.mkdir(exist_ok=True)
    for idl in (ROOT / "thrift").glob("*.thrift"):
        (target / idl.name).write_bytes(idl.read_bytes())


class BuildPyWithProtos(build_py):
    """build_py that first copies the IDL in (the protobuf modules are generated when
    this script loads: install_requires reads their protobuf version)."""

    def run(self):
        copy_idl()
        super().run()


def cython_extensions():
    from Cython.Build import cythonize
    import numpy

    debug = os.environ.get("NAVI_CYTHON_DEBUG") == "1"
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": False,
        "initializedcheck": debug,
        "cdivision": True,
        "nonecheck": False,
    }
    # our own C (bpr_kernels.h) is clean under these; tests/unit/test_bpr_kernels.py
    # compiles it alone with -Werror, as Cython's generated C may warn on its own
    warnings = ["-Wall", "-Wextra"]
    extensions = [
        Extension(
            "navi._fast._bpr",
            ["navi/_fast/_bpr.pyx"],
            depends=["navi/_fast/bpr_kernels.h"],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3", *warnings],
        ),
        Extension("navi._fast._pbscan", ["navi/_fast/_pbscan.pyx"], extra_compile_args=["-O3", *warnings]),
    ]
    return cythonize(extensions, compiler_directives=directives)


def protobuf_requirement() -> str:
    """protobuf no older than the gencode protoc wrote into navi/_proto.

    The generated modules refuse to import under an older protobuf runtime,
    so the floor is whatever the grpcio-tools of this build emits.
    """
    generate_protos()
    gencode = re.compile(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
                         r"\s*(\d+),\s*(\d+),\s*(\d+),")
    versions = {tuple(map(int, m.groups())) for f in PROTO_OUT.rglob("*_pb2.py")
                for m in [gencode.search(f.read_text())] if m}
    if not versions:  # an older protoc that writes no version check
        return "protobuf>=4.25"
    major, minor, patch = max(versions)
    return f"protobuf>={major}.{minor}.{patch},<{major + 1}"


# The base install serves ONNX models, converts and inspects; TLS (--ssl-dir) reads the
# certificate's expiry with cryptography.
INSTALL_REQUIRES = [
    "numpy>=1.26",
    "numba>=0.59",
    "grpcio>=1.60",
    "grpcio-health-checking>=1.60",
    "grpcio-reflection>=1.60",
    protobuf_requirement(),
    "thriftpy2>=0.4.17",
    "click>=8.1",
    "prometheus-client>=0.19",
    "pydantic>=2.5",
    "pyyaml>=6",
    "cryptography>=42",
    "tqdm>=4.66",
    "onnxruntime>=1.17",
    "onnx>=1.15",
    "aiohttp>=3.9",  # the REST port (navi.server.http)
]
# tf, torch and bench: one table, navi/optional.py, which also words the message a
# missing one gives at run time. Read without importing navi (not built yet).
OPTIONAL = runpy.run_path(str(ROOT / "navi" / "optional.py"))["EXTRAS"]
EXTRAS = {extra: sorted(requirements.values()) for extra, requirements in OPTIONAL.items()}
EXTRAS["all"] = sorted({r for extra in OPTIONAL for r in EXTRAS[extra]})
# the test suite covers navi bench too; `make test` installs .[all,test]
EXTRAS["test"] = sorted({
    "pytest>=8",
    "pytest-asyncio>=0.23",
    "pytest-timeout>=2.2",
    "hypothesis>=6.100",
    "tensorflow-serving-api>=2.15",
    "import-linter>=2.0",
    "jsonschema>=4",
    "onnxruntime-extensions>=0.10",  # a real custom-op library for the --customops-lib tests
    "kubernetes>=29",  # its models validate deploy/ offline
    "tritonclient[http]>=2.40",  # a real KServe V2 HTTP client for the REST tests
    "requests>=2.31",
    *EXTRAS["bench"],
    *EXTRAS["ray"],
})

setup(
    name="navi",
    version="0.1.0",
    description="ML model-serving daemon: TF Serving / KServe V2 gRPC APIs, dynamic batching, "
    "a one-pass Cython BatchPredictionRequest converter",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["navi", "navi.*"]),
    package_data={"navi._fast": ["*.pyx", "*.pxd", "*.pyi", "*.h"], "navi._proto": ["**/*.pyi"], "navi": ["_idl/*.thrift"]},
    ext_modules=cython_extensions(),
    cmdclass={"build_py": BuildPyWithProtos},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["navi = navi.cli.main:main"]},
    zip_safe=False,
)
