"""TensorFlow SavedModel runtime (``--runtime tf``).

A version directory is a SavedModel (``saved_model.pb`` plus ``variables/``),
loaded with the ``serve`` tag as TF Serving does. The model served through
Predict is the signature named by ``--serving-sig`` (``serving_default`` by
default); every other signature stays reachable through ``run_signature``,
``classify`` and ``regress``.

How the served inputs and outputs are chosen (``--input`` / ``--output``):
the rule of every runtime, ``navi.plugins.base.served_inputs`` and
``served_outputs``, applied to the serving signature (inputs and outputs
sorted by name where they are detected).

Dtypes are the signature's: every dtype TF Serving's Predict carries works,
strings included (``DT_STRING`` is a numpy object array of ``bytes``, e.g.
serialized ``tf.Example`` protos). Numeric inputs are converted to the
model's dtype where numpy's "same_kind" rule allows (float64 -> float32).

Threads: ``--intra-op-parallelism`` / ``--inter-op-parallelism`` set
TensorFlow's thread pools, which are **process-wide** and can only be set
before TensorFlow runs its first op: the first model loaded decides, later
different values are logged and ignored (0 = TensorFlow's default, all cores).

Classify / Regress: a signature whose ``method_name`` is
``tensorflow/serving/classify`` (input ``inputs``: serialized tf.Example;
outputs ``classes`` and/or ``scores``) or ``tensorflow/serving/regress``
(output ``outputs``) is run by ``classify`` / ``regress`` on the loaded model,
as TF Serving's Classify and Regress do. ``signature_defs`` returns every
signature with its method name and the original ``SignatureDef`` bytes (in
``Signature.extra["signature_def_proto"]``) for GetModelMetadata.

TensorFlow is imported when this module is, which the plugin registry does
only for ``--runtime tf``.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
# Without TensorFlow importing this module fails and navi.plugins.resolve_runtime says what to install.
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from navi.errors import Code, ConfigError, InvalidInput, NaviError, RuntimeFailure, Unimplemented
from navi.plugins.base import (
    LoadedModel, ProcessThreadPools, Runtime, Signature, TensorSpec, conform_inputs, served_inputs, served_outputs,
)
from navi.settings import ModelSettings

logger = logging.getLogger(__name__)

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
#: TF Serving's fixed tensor keys of classify / regress signatures
CLASSIFY_INPUTS, CLASSIFY_CLASSES, CLASSIFY_SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"
SERVE_TAG = "serve"
_STRING = np.dtype(object)

def _apply_threads(intra_op: int, inter_op: int, model_name: str) -> tuple[int, int]:
    """Set TensorFlow's pools; it only accepts this before its first op runs."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        return intra_op, inter_op
    except RuntimeError as exc:
        # something in this process already ran TensorFlow
        applied = (tf.config.threading.get_intra_op_parallelism_threads(),
                   tf.config.threading.get_inter_op_parallelism_threads())
        logger.warning("TensorFlow already initialized (%s); model %s keeps intra_op=%d inter_op=%d",
                       exc, model_name, *applied)
        return applied


#: TensorFlow's process-wide thread pools: the first model loaded decides
THREADS = ProcessThreadPools("TensorFlow", _apply_threads)


# Custom-op libraries register their ops in the process (as the original's
# TF binary loads them at start-up); each path is loaded once.
_custom_ops_lock = threading.Lock()
_custom_ops_loaded: set[str] = set()


def load_custom_ops(libraries) -> None:
    """``tf.load_op_library`` each path not loaded yet; ``ConfigError`` naming one that fails."""
    with _custom_ops_lock:
        for library in (str(path) for path in libraries):
            if library in _custom_ops_loaded:
                continue
            try:
                tf.load_op_library(library)
            except Exception as exc:  # tf.errors.NotFoundError for a bad path or symbol
                raise ConfigError(f"TensorFlow cannot load custom-op library {library}: {exc}",
                                  key="customops_libs") from None
            _custom_ops_loaded.add(library)
            logger.info("loaded TensorFlow custom-op library %s", library)


def _numpy_dtype(tf_dtype: "tf.DType") -> np.dtype:
    """numpy dtype used for a TensorFlow dtype (object for strings)."""
    if tf_dtype == tf.string:
        return _STRING
    return np.dtype(tf_dtype.as_numpy_dtype)


def _tensor_spec(key: str, info: "meta_graph_pb2.TensorInfo") -> tuple[TensorSpec, bool]:
    """TensorSpec of one SignatureDef entry, and whether its rank is unknown."""
    try:
        dtype = _numpy_dtype(tf.dtypes.as_dtype(info.dtype))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tensor {key!r} has a dtype navi cannot serve: {exc}", key=key) from exc
    if info.tensor_shape.unknown_rank:
        return TensorSpec(key, dtype, (-1,)), True
    return TensorSpec(key, dtype, tuple(int(dim.size) for dim in info.tensor_shape.dim)), False


def _signature_from_def(name: str, sig_def: "meta_graph_pb2.SignatureDef") -> tuple[Signature, frozenset[str]]:
    """Our Signature of a SignatureDef (tensors sorted by key) and its unknown-rank inputs."""
    unknown: set[str] = set()
    inputs = []
    for key in sorted(sig_def.inputs):
        spec, unknown_rank = _tensor_spec(key, sig_def.inputs[key])
        inputs.append(spec)
        if unknown_rank:
            unknown.add(key)
    outputs = [_tensor_spec(key, sig_def.outputs[key])[0] for key in sorted(sig_def.outputs)]
    signature = Signature(
        tuple(inputs),
        tuple(outputs),
        method_name=sig_def.method_name or PREDICT_METHOD,
        extra={"signature_name": name, "signature_def_proto": sig_def.SerializeToString()},
    )
    return signature, frozenset(unknown)


def read_meta_graph(version_dir: Path, tag: str = SERVE_TAG) -> "meta_graph_pb2.MetaGraphDef":
    """The MetaGraphDef tagged exactly ``{tag}`` (or containing it) of a SavedModel directory."""
    saved_model = saved_model_pb2.SavedModel()
    binary = version_dir / "saved_model.pb"
    if binary.exists():
        saved_model.ParseFromString(binary.read_bytes())
    else:
        text_format.Parse((version_dir / "saved_model.pbtxt").read_text(), saved_model)
    tag_sets = [list(graph.meta_info_def.tags) for graph in saved_model.meta_graphs]
    exact = [g for g in saved_model.meta_graphs if list(g.meta_info_def.tags) == [tag]]
    holding = [g for g in saved_model.meta_graphs if tag in g.meta_info_def.tags]
    if not (exact or holding):
        raise ConfigError(
            f"SavedModel has no meta graph tagged {tag!r} (tag sets: {tag_sets})", source=str(version_dir)
        )
    return (exact or holding)[0]


def _op_error_text(exc: "tf.errors.OpError") -> str:
    """The cause of a TensorFlow op error, without the Python stack and graph node lines it carries."""
    kept = [
        line.strip()
        for line in exc.message.splitlines()
        if line.strip()
        and not line[:1].isspace()
        and not line.startswith(("Graph execution error", "Detected at node", "<stack traces unavailable>"))
    ]
    return " ".join(kept) or exc.message.strip()


class _SignatureRunner:
    """One callable signature: its spec, its concrete function and how to feed it."""

    def __init__(self, name: str, signature: Signature, unknown_rank: frozenset[str], function):
        self.name = name
        self.signature = signature
        self.unknown_rank = unknown_rank
        self.function = function
        self.tf_dtypes = {
            spec.name: (tf.string if spec.dtype == _STRING else tf.as_dtype(spec.dtype))
            for spec in signature.inputs
        }

    def __call__(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], served_outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        wanted = tuple(output_names) or tuple(served_outputs)
        unknown = [name for name in wanted if name not in served_outputs]
        if unknown:
            raise InvalidInput(
                f"signature {self.name!r} has no output {', '.join(unknown)}; "
                f"outputs: {', '.join(served_outputs)}"
            )
        arrays = conform_inputs(self.signature.inputs, inputs, unknown_rank=self.unknown_rank)
        try:
            feeds = {
                name: tf.convert_to_tensor(array, dtype=self.tf_dtypes[name]) for name, array in arrays.items()
            }
            result = self.function(**feeds)
        except tf.errors.InvalidArgumentError as exc:
            # TF Serving answers a model's own argument errors (bad tf.Example, ...) INVALID_ARGUMENT
            raise InvalidInput(f"signature {self.name!r}: {_op_error_text(exc)}") from exc
        except tf.errors.OpError as exc:
            raise RuntimeFailure(f"signature {self.name!r} failed: {_op_error_text(exc)}") from exc
        except (TypeError, ValueError) as exc:
            # the concrete function rejects feeds that do not match its traced specs
            raise InvalidInput(f"signature {self.name!r}: {exc}") from exc
        return {name: result[name].numpy() for name in wanted}


def _is_input_message(value: Any) -> bool:
    """Whether ``value`` is a ``tensorflow.serving.Input`` message rather than a list of bytes."""
    return hasattr(value, "WhichOneof") and hasattr(value, "example_list")


def input_to_examples(message: Any) -> list[bytes]:
    """Serialized tf.Examples of a TF Serving ``Input`` message.

    With a context, each example is the context's bytes followed by the
    example's: protobuf merges concatenated messages, so the model parses
    one Example holding both, and a feature present in both takes the
    example's value (as TF Serving does).
    """
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in message.example_list.examples]
    if kind == "example_list_with_context":
        listed = message.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + example.SerializeToString() for example in listed.examples]
    raise InvalidInput("Input is empty: set example_list or example_list_with_context")


def classification_result_bytes(classes: np.ndarray | None, scores: np.ndarray | None) -> bytes:
    """TF Serving's ``ClassificationResult`` (serialized) of classify's arrays."""
    from navi._proto.tensorflow_serving.apis import classification_pb2  # generated at build time

    result = classification_pb2.ClassificationResult()
    shape = classes.shape if classes is not None else scores.shape
    for row in range(shape[0]):
        entry = result.classifications.add()
        for column in range(shape[1]):
            item = entry.classes.add()
            if classes is not None:
                label = classes[row, column]
                item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                item.score = float(scores[row, column])
    return result.SerializeToString()


def regression_result_bytes(values: np.ndarray) -> bytes:
    """TF Serving's ``RegressionResult`` (serialized) of regress's values."""
    from navi._proto.tensorflow_serving.apis import regression_pb2  # generated at build time

    result = regression_pb2.RegressionResult()
    for value in values.tolist():
        result.regressions.add(value=float(value))
    return result.SerializeToString()


class TensorFlowModel(LoadedModel):
    """One loaded SavedModel version; every method is safe to call from several threads."""

    def __init__(
        self,
        name: str,
        loaded,
        runners: dict[str, _SignatureRunner],
        serving_name: str,
        signature: Signature,
    ):
        self._name = name
        self._loaded = loaded  # owns the variables the signature functions read
        self._runners = runners
        self._serving_name = serving_name
        self._signature = signature
        self._served_outputs = tuple(spec.name for spec in signature.outputs)

    @property
    def signature(self) -> Signature:
        """The served signature, restricted to the configured inputs and outputs."""
        return self._signature

    def run(self, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Run the serving signature on one batch of named arrays."""
        return self._runners[self._serving_name](inputs, output_names, self._served_outputs)

    def signature_defs(self) -> dict[str, Signature]:
        """Every signature of the SavedModel by name (``__``-prefixed internal ones left out)."""
        return {name: runner.signature for name, runner in self._runners.items()}

    def _runner(self, signature_name: str | None, method: str | None) -> _SignatureRunner:
        """The signature a request names, or the one to use for ``method`` when it names none."""
        if signature_name:
            runner = self._runners.get(signature_name)
            if runner is None:
                # TF Serving's code and wording for an unknown signature key
                raise NaviError(
                    f'Serving signature key "{signature_name}" not found; model {self._name} has: '
                    + ", ".join(sorted(self._runners)),
                    Code.FAILED_PRECONDITION,
                )
            if method is not None and runner.signature.method_name != method:
                raise InvalidInput(
                    f"Expected signature {signature_name!r} method_name to be {method}. "
                    f"Was: {runner.signature.method_name}"
                )
            return runner
        if method is None:
            return self._runners[self._serving_name]
        serving = self._runners[self._serving_name]
        if serving.signature.method_name == method:
            return serving
        matching = sorted(n for n, r in self._runners.items() if r.signature.method_name == method)
        if not matching:
            raise Unimplemented(
                f"model {self._name} exports no signature with method_name {method}; "
                "signatures: " + ", ".join(sorted(self._runners))
            )
        if len(matching) > 1:
            raise InvalidInput(
                f"model {self._name} has several {method} signatures ({', '.join(matching)}); "
                "name one in model_spec.signature_name"
            )
        return self._runners[matching[0]]

    def run_signature(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        """Run another signature of the model (Predict with ``model_spec.signature_name``)."""
        runner = self._runner(signature_name or self._serving_name, None)
        if runner.name == self._serving_name:
            return self.run(inputs, output_names)
        return runner(inputs, output_names, tuple(spec.name for spec in runner.signature.outputs))

    def _examples(self, runner: _SignatureRunner, serialized_examples: Sequence[bytes]) -> dict[str, np.ndarray]:
        specs = runner.signature.inputs
        if len(specs) != 1 or specs[0].dtype != _STRING:
            raise InvalidInput(
                f"signature {runner.name!r} must take exactly one string input of serialized "
                f"tf.Example; it takes {', '.join(s.name for s in specs)}"
            )
        examples = np.empty(len(serialized_examples), dtype=object)
        examples[:] = [bytes(example) for example in serialized_examples]
        return {specs[0].name: examples}

    def classify(
        self, serialized_examples: "Sequence[bytes] | Any", signature_name: str | None = None
    ) -> "tuple[np.ndarray | None, np.ndarray | None] | bytes":
        """TF Serving's Classify: (classes [n, k] of bytes or None, scores [n, k] float32 or None).

        With no ``signature_name``, the serving signature is used when it is a
        classify signature, else the model's only classify signature.

        ``serialized_examples`` may also be TF Serving's ``Input`` message
        (what the gRPC layer hands over); the answer is then TF Serving's
        ``ClassificationResult``, serialized.
        """
        as_message = _is_input_message(serialized_examples)
        examples = input_to_examples(serialized_examples) if as_message else serialized_examples
        runner = self._runner(signature_name, CLASSIFY_METHOD)
        outputs = [key for key in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if runner.signature.output(key)]
        if not outputs:
            raise RuntimeFailure(
                f"classify signature {runner.name!r} has neither a {CLASSIFY_CLASSES!r} nor a "
                f"{CLASSIFY_SCORES!r} output"
            )
        result = runner(self._examples(runner, examples), tuple(outputs), tuple(outputs))
        rows = len(examples)
        answer: list[np.ndarray | None] = []
        for key in (CLASSIFY_CLASSES, CLASSIFY_SCORES):
            value = result.get(key)
            if value is not None:
                if value.ndim == 1:
                    value = value.reshape(-1, 1)
                if value.ndim != 2 or value.shape[0] != rows:
                    raise RuntimeFailure(
                        f"classify output {key!r} must have shape [{rows}, num_classes], got {list(value.shape)}"
                    )
            answer.append(value)
        classes, scores = answer
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise RuntimeFailure(
                f"classify outputs disagree: classes {list(classes.shape)}, scores {list(scores.shape)}"
            )
        if as_message:
            return classification_result_bytes(classes, scores)
        return classes, scores

    def regress(
        self, serialized_examples: "Sequence[bytes] | Any", signature_name: str | None = None
    ) -> "np.ndarray | bytes":
        """TF Serving's Regress: one float per example, shape [n].

        Given TF Serving's ``Input`` message instead of bytes, the answer is
        TF Serving's ``RegressionResult``, serialized.
        """
        as_message = _is_input_message(serialized_examples)
        examples = input_to_examples(serialized_examples) if as_message else serialized_examples
        runner = self._runner(signature_name, REGRESS_METHOD)
        if runner.signature.output(REGRESS_OUTPUTS) is None:
            raise RuntimeFailure(f"regress signature {runner.name!r} has no {REGRESS_OUTPUTS!r} output")
        result = runner(self._examples(runner, examples), (REGRESS_OUTPUTS,), (REGRESS_OUTPUTS,))
        values = result[REGRESS_OUTPUTS]
        rows = len(examples)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1 or values.shape[0] != rows:
            raise RuntimeFailure(f"regress output must have shape [{rows}] or [{rows}, 1], got {list(values.shape)}")
        if as_message:
            return regression_result_bytes(values)
        return values

    def close(self) -> None:
        """Drop the graph and variables; TensorFlow frees them when the last reference goes."""
        self._runners = {}
        self._loaded = None


class TensorFlowRuntime(Runtime):
    """Loads SavedModel version directories (``--runtime tf``)."""

    name = "tf"
    model_filename = "saved_model.pb"

    def is_complete(self, version_dir: Path) -> bool:
        """A graph file, and the variables index when the model has variables."""
        has_graph = (version_dir / "saved_model.pb").exists() or (version_dir / "saved_model.pbtxt").exists()
        variables = version_dir / "variables"
        return has_graph and (not variables.is_dir() or (variables / "variables.index").exists())

    def check_options(self, settings: ModelSettings) -> None:
        """At start-up: load the model's custom-op libraries (a bad one stops start-up)."""
        load_custom_ops(settings.customops_libs)

    def load(self, version_dir: Path, settings: ModelSettings) -> TensorFlowModel:
        """Load the ``serve`` meta graph and pick the serving signature and tensors."""
        version_dir = Path(version_dir)
        source = str(version_dir)
        load_custom_ops(settings.customops_libs)
        THREADS.configure(settings.intra_op_parallelism, settings.inter_op_parallelism, settings.name)
        meta_graph = read_meta_graph(version_dir)
        sig_defs = {name: sd for name, sd in meta_graph.signature_def.items() if not name.startswith("__")}
        serving_name = settings.serving_signature or "serving_default"
        if serving_name not in sig_defs:
            raise ConfigError(
                f"SavedModel has no signature {serving_name!r}; it has: {', '.join(sorted(sig_defs)) or 'none'}",
                source=source, key="serving_signature",
            )
        try:
            loaded = tf.saved_model.load(str(version_dir), tags=[SERVE_TAG])
        except Exception as exc:
            raise RuntimeFailure(f"{source}: TensorFlow could not load the SavedModel: {exc}") from exc
        runners: dict[str, _SignatureRunner] = {}
        for name, sig_def in sig_defs.items():
            function = loaded.signatures.get(name)
            if function is None:
                logger.warning("%s: signature %r is not callable after loading; skipped", source, name)
                continue
            signature, unknown_rank = _signature_from_def(name, sig_def)
            runners[name] = _SignatureRunner(name, signature, unknown_rank, function)
        if serving_name not in runners:
            raise RuntimeFailure(f"{source}: signature {serving_name!r} could not be loaded")
        full = runners[serving_name].signature
        input_names = served_inputs(settings.inputs, [s.name for s in full.inputs], source=source,
                                    foreign_means_detect=True)
        output_names = served_outputs(settings.outputs, [s.name for s in full.outputs], source=source)
        served = Signature(
            tuple(full.input(name) for name in input_names),
            tuple(full.output(name) for name in output_names),
            method_name=full.method_name,
            extra=dict(full.extra),
        )
        logger.info(
            "%s: serving signature %r (%s), inputs %s, outputs %s",
            source, serving_name, full.method_name, ",".join(input_names), ",".join(output_names),
        )
        return TensorFlowModel(settings.name, loaded, runners, serving_name, served)


__all__ = ["TensorFlowModel", "TensorFlowRuntime", "THREADS", "read_meta_graph"]
