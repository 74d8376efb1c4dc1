"""Deterministic demo models, built with the ``onnx`` helper API.

* ``home``: the original's five-input "home" layout (continuous float32,
  binary int64, three float32 embeddings) -> one sigmoid probability per row,
  output ``output_0`` [-1, 1]. NaN (a missing continuous feature) becomes 0
  inside the graph (IsNaN + Where) unless the spec's default already fills 0,
  as the committed demo's does; the first layer is one MatMul per input, summed. A small MLP (one hidden layer of 16) is committed under ``models/home``; the "heavy" variant (1024-512-256,
  about 7M parameters, ~28 MB) is built on demand for benchmarks.
* ``dense``: plain dense inputs, ``x`` float32 [-1, 16] -> ``y`` float32 [-1, 4].

Weights come from ``numpy.random.default_rng(seed)`` and every field that
could vary (opset, IR version, producer) is pinned, so the same arguments give
the same bytes on every machine: the committed files can be checked against a
rebuild.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: version directory name of every demo model (epoch millis, fixed for reproducibility)
DEMO_VERSION = 1700000000000
#: pinned so the bytes do not change with the installed onnx package
OPSET = 17
IR_VERSION = 8
PRODUCER = "navi-demo"
PRODUCER_VERSION = "1"

#: the home layout's five model inputs, in feed order, with the original's widths
HOME_INPUTS: tuple[tuple[str, int], ...] = (
    ("continuous", TensorProto.FLOAT),
    ("binary", TensorProto.INT64),
    ("user_embedding", TensorProto.FLOAT),
    ("user_eng_embedding", TensorProto.FLOAT),
    ("author_embedding", TensorProto.FLOAT),
)
HOME_WIDTHS: dict[str, int] = {
    "continuous": 5293,
    "binary": 149,
    "user_embedding": 200,
    "user_eng_embedding": 200,
    "author_embedding": 200,
}
HOME_HIDDEN = (16,)
HEAVY_HIDDEN = (1024, 512, 256)
HOME_OUTPUT = "output_0"

#: spec file names the pipeline looks for next to a home model
SPEC_FILES = ("segdense_transform_spec_home_recap_2022.json", "all_config.json")


def _dense_layers(
    rng: np.random.Generator, x: str, fan_in: int, hidden: Sequence[int], out_width: int,
    prefix: str,
) -> tuple[list, list, str]:
    """Gemm(+Relu) layers from ``x`` [-1, fan_in] to [-1, out_width]; returns nodes, weights, output."""
    nodes, initializers = [], []
    widths = [fan_in, *hidden, out_width]
    current = x
    for layer, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        # scaled so activations stay O(1) whatever the width (He-style)
        weight = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out)).astype(np.float32)
        bias = rng.normal(0.0, 0.05, size=(n_out,)).astype(np.float32)
        w_name, b_name = f"{prefix}w{layer}", f"{prefix}b{layer}"
        initializers += [numpy_helper.from_array(weight, w_name), numpy_helper.from_array(bias, b_name)]
        gemm_out = f"{prefix}gemm{layer}"
        nodes.append(helper.make_node("Gemm", [current, w_name, b_name], [gemm_out]))
        if layer < len(widths) - 2:
            relu_out = f"{prefix}relu{layer}"
            nodes.append(helper.make_node("Relu", [gemm_out], [relu_out]))
            current = relu_out
        else:
            current = gemm_out
    return nodes, initializers, current


def _finish(graph: onnx.GraphProto, kind: str, seed: int, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"navi.demo": kind, "navi.seed": str(seed)})
    onnx.checker.check_model(model, full_check=True)
    return model


def build_home_model(
    widths: dict[str, int] | None = None, hidden: Sequence[int] = HOME_HIDDEN, seed: int = 0,
    zero_missing: bool = True,
) -> onnx.ModelProto:
    """The home-layout MLP: five inputs (widths by input name) -> ``output_0`` [-1, 1] probabilities.

    ``zero_missing`` turns NaN continuous values (the original's "missing")
    into 0 inside the graph; leave it off when the spec's default is already 0.

    ``widths`` defaults to the original's hard-coded layout (5293 / 149 / 200 x 3);
    pass the widths of a ``DenseLayout`` to match other spec files.
    """
    widths = dict(HOME_WIDTHS if widths is None else widths)
    missing = [name for name, _ in HOME_INPUTS if name not in widths]
    if missing:
        raise ValueError(f"no width given for home input(s) {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    inputs = [
        helper.make_tensor_value_info(name, elem_type, ["batch", widths[name]])
        for name, elem_type in HOME_INPUTS
    ]
    # The first layer is a sum of one MatMul per input rather than a MatMul
    # over their concatenation: the same function without copying every row
    # (6042 floats) into a concatenated buffer first.
    hidden = list(hidden)
    fan_in = sum(widths[name] for name, _ in HOME_INPUTS)
    first_out = hidden[0] if hidden else 1
    w0 = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, first_out)).astype(np.float32)
    b0 = rng.normal(0.0, 0.05, size=(first_out,)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["binary"], ["binary_f"], to=TensorProto.FLOAT)]
    initializers = [numpy_helper.from_array(b0, "first_b")]
    if zero_missing:
        nodes += [
            helper.make_node("IsNaN", ["continuous"], ["cont_isnan"]),
            helper.make_node("Where", ["cont_isnan", "zero", "continuous"], ["cont_clean"]),
        ]
        initializers.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    row = 0
    partials = []
    for name, _ in HOME_INPUTS:
        source = {"continuous": "cont_clean" if zero_missing else "continuous", "binary": "binary_f"}.get(name, name)
        w_name = f"first_w_{name}"
        initializers.append(numpy_helper.from_array(w0[row:row + widths[name]], w_name))
        row += widths[name]
        nodes.append(helper.make_node("MatMul", [source, w_name], [f"first_mm_{name}"]))
        partials.append(f"first_mm_{name}")
    nodes.append(helper.make_node("Sum", partials + ["first_b"], ["first_linear"]))
    if hidden:
        nodes.append(helper.make_node("Relu", ["first_linear"], ["first_relu"]))
        mlp_nodes, mlp_weights, logit = _dense_layers(rng, "first_relu", hidden[0], hidden[1:], 1, "mlp_")
        nodes += mlp_nodes
        initializers += mlp_weights
    else:
        logit = "first_linear"
    nodes.append(helper.make_node("Sigmoid", [logit], [HOME_OUTPUT]))
    outputs = [helper.make_tensor_value_info(HOME_OUTPUT, TensorProto.FLOAT, ["batch", 1])]
    graph = helper.make_graph(nodes, "navi_home_demo", inputs, outputs, initializers)
    hidden_text = "-".join(str(h) for h in hidden)
    return _finish(graph, "home", seed,
                   f"navi demo home model: MLP {fan_in}-{hidden_text}-1, seed {seed}")


def build_dense_model(
    in_width: int = 16, out_width: int = 4, hidden: Sequence[int] = (8,), seed: int = 0,
    input_name: str = "x", output_name: str = "y",
) -> onnx.ModelProto:
    """A plain dense model: ``x`` float32 [-1, in_width] -> ``y`` float32 [-1, out_width] (tanh)."""
    rng = np.random.default_rng(seed)
    nodes, initializers, last = _dense_layers(rng, input_name, in_width, hidden, out_width, "mlp_")
    nodes.append(helper.make_node("Tanh", [last], [output_name]))
    graph = helper.make_graph(
        nodes,
        "navi_dense_demo",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", in_width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", out_width])],
        initializers,
    )
    return _finish(graph, "dense", seed, f"navi demo dense model {in_width}->{out_width}, seed {seed}")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write atomically: a watcher polling the directory never sees half a model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # mkstemp creates 0600; a model file is as readable as any other file
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Serialize ``model`` to ``path`` (atomically) and return the path."""
    _write_bytes(Path(path), model.SerializeToString())
    return Path(path)


#: The demo spec fills missing continuous features with 0 (its default_value),
#: so the graph needs no NaN handling: ONNX Runtime's Where over a [100, 5293]
#: batch costs more than the rest of the small model together.
DEMO_CONTINUOUS_DEFAULT = "0"


def layout_widths(version_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write the example home spec files into ``version_dir`` and return their input widths.

    The widths are read back through ``navi.segdense``, exactly as the serving
    pipeline will read them, so the model and its spec files cannot disagree.
    """
    # imported here: building the dense demo must not need the converter stack
    from navi.segdense import find_spec_files, load_layout
    from navi.workload import home_layout_files

    home_layout_files(version_dir, seed=seed, continuous_default=DEMO_CONTINUOUS_DEFAULT)
    found = find_spec_files(version_dir)
    if found is None:
        raise RuntimeError(f"home_layout_files wrote no spec files into {version_dir}")
    layout = load_layout(*found)
    widths = {tensor.name: int(tensor.width) for tensor in layout.tensors}
    return {name: widths[name] for name in layout.feed_order}


def write_home_version(
    model_dir: Path, hidden: Sequence[int] = HOME_HIDDEN, seed: int = 0,
    version: int = DEMO_VERSION,
) -> Path:
    """Write ``model_dir/<version>/`` with the spec files and a home MLP; return the version dir.

    The spec files go first and ``model.onnx`` last: a version directory is
    complete (to the repository scanner) only once its model file exists.
    """
    version_dir = Path(model_dir) / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    widths = layout_widths(version_dir, seed=seed)
    save_model(build_home_model(widths, hidden=hidden, seed=seed, zero_missing=False), version_dir / "model.onnx")
    return version_dir


def write_dense_version(model_dir: Path, seed: int = 0, version: int = DEMO_VERSION) -> Path:
    """Write ``model_dir/<version>/model.onnx`` with the dense demo model; return the version dir."""
    version_dir = Path(model_dir) / str(version)
    save_model(build_dense_model(seed=seed), version_dir / "model.onnx")
    return version_dir


def write_demo_models(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the committed demo repository (``home`` and ``dense``) under ``out_dir``."""
    out_dir = Path(out_dir)
    return {
        "home": write_home_version(out_dir / "home", seed=seed),
        "dense": write_dense_version(out_dir / "dense", seed=seed),
    }


def write_heavy_model(out_dir: Path, seed: int = 0) -> Path:
    """Write the benchmark's heavy home model to ``out_dir/home_heavy/<version>/``; return that dir."""
    return write_home_version(Path(out_dir) / "home_heavy", hidden=HEAVY_HIDDEN, seed=seed)


def ensure_heavy_model(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """The heavy model's model dir (``cache_dir/home_heavy``), built only if it is not there yet.

    ``cache_dir`` defaults to ``default_cache_dir()/models``. The check is by
    file presence: a cache built with another seed is not rebuilt.
    """
    if cache_dir is None:
        cache_dir = default_cache_dir() / "models"
    model_dir = Path(cache_dir) / "home_heavy"
    if not (model_dir / str(DEMO_VERSION) / "model.onnx").is_file():
        write_heavy_model(cache_dir, seed=seed)
    return model_dir


def default_cache_dir() -> Path:
    """Where on-demand models go: ``$NAVI_CACHE_DIR``, else ``$XDG_CACHE_HOME/navi`` (~/.cache/navi)."""
    explicit = os.environ.get("NAVI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "navi"


def demo_repository() -> Path:
    """The demo model repository (with ``home`` and ``dense``), for ``navi serve`` with no arguments.

    In a source checkout (or editable install) that is the committed
    ``models/`` next to the ``navi`` package. An installed wheel has no
    ``models/``, so the same bytes are built once into ``default_cache_dir()/models``:
    the builders are deterministic, so both places hold identical models.
    """
    checkout = Path(__file__).resolve().parent.parent / "models"
    if (checkout / "home" / str(DEMO_VERSION) / "model.onnx").is_file():
        return checkout
    built = default_cache_dir() / "models"
    if not all((built / name / str(DEMO_VERSION) / "model.onnx").is_file() for name in ("home", "dense")):
        write_demo_models(built)
    return built


def file_digest(path: Path) -> str:
    """SHA-256 of a file, to compare a committed model with a rebuild."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of weights in ``model`` (scalars included)."""
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer)
