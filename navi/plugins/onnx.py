"""The ONNX Runtime plugin: ``--runtime onnx``.

A version directory holds ``model.onnx`` (plus, for home models, the segdense
spec files, which the pipeline reads, not this plugin). Session settings come
from ``ModelSettings``: the thread counts, and ``runtime_options`` holding the
original's ``--onnx-*`` flags as strings (keys in ``OPTION_KEYS``). Every option
is parsed strictly at load time (``OnnxRuntime.check_options`` lets start-up do
it earlier): a bad value raises ``ConfigError`` naming the option.

``InferenceSession.run`` releases the GIL and is safe to call from several
threads at once, so one session serves all of a model's batch workers.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from navi.errors import ConfigError, InvalidInput, RuntimeFailure
from navi.plugins.base import LoadedModel, Runtime, Signature, TensorSpec
from navi.plugins.onnx_shared import NotShared, SharedWeights, log_once, open_shared, release
from navi.settings import ModelSettings, parse_bool

logger = logging.getLogger(__name__)

#: runtime_options keys this plugin understands (the original's flag names,
#: dashes turned into underscores) and what each means
OPTION_KEYS: dict[str, str] = {
    "onnx_use_parallel_mode": "true/false: run independent graph nodes in parallel "
    "(ORT_PARALLEL; the inter-op pool is used only then)",
    "onnx_use_memory_pattern": "true/false: pre-plan memory from the first run's shapes "
    "(ONNX Runtime's default is true)",
    "onnx_gpu_ep": "execution provider: cuda, tensorrt or onednn (falls back to CPU with a "
    "log line when this onnxruntime build lacks it)",
    "onnx_ep_options": "k=v,k=v options of the execution provider: onnx_gpu_ep's when one is "
    "named, else the CPU provider's (use_arena=true/false, as the original)",
    "onnx_global_thread_pool_options": "intra_op_num_threads=N,inter_op_num_threads=M: "
    "one thread pool shared by every session of the process (set once per process)",
    "onnx_allow_spinning": "true/false: let idle intra-op threads spin-wait (default false: "
    "on a few shared cores spinning steals CPU from the request path)",
    "profiling": "file prefix: write an ONNX Runtime profile (JSON) of this session",
}

#: --onnx-gpu-ep value -> ONNX Runtime provider names to try, in order
GPU_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cuda": ("CUDAExecutionProvider",),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    "onednn": ("DnnlExecutionProvider",),
}

#: options of the CPU execution provider (--onnx-ep-options without --onnx-gpu-ep)
#: -> what each means. ONNX Runtime's Python API takes no CPU provider
#: options (it silently ignores any), so each is applied here as the session
#: setting it stands for in the C API the original calls.
CPU_EP_OPTIONS: dict[str, str] = {
    "use_arena": "true/false: the CPU memory arena (SessionOptions.enable_cpu_mem_arena)",
}

#: ONNX type strings (as NodeArg.type reports them) -> numpy dtypes
ONNX_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    # ONNX Runtime takes string tensors as numpy object (or unicode) arrays
    "tensor(string)": np.dtype(object),
}

# The global thread pool is a property of the process-wide ONNX Runtime
# environment: it can be set once, before the first session, and from then on
# every session must use it. Guarded because models load on several threads.
_global_pool_lock = threading.Lock()
_global_pool_sizes: tuple[int, int] | None = None


def _parse_bool(key: str, value: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise ConfigError(f"expected true or false, got {value!r}", key=key) from None


def _parse_pairs(key: str, value: str) -> dict[str, str]:
    """Parse ``k=v,k=v`` strictly: every item needs a non-empty key; keys may not repeat."""
    pairs: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, item_value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"expected k=v,k=v but found {item!r}", key=key)
        if name in pairs:
            raise ConfigError(f"{name!r} is given twice", key=key)
        pairs[name] = item_value.strip()
    return pairs


@dataclass(frozen=True)
class OnnxOptions:
    """The parsed, validated ONNX Runtime options of one model."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    parallel_mode: bool = False
    memory_pattern: bool | None = None  # None = ONNX Runtime's default
    allow_spinning: bool = False
    gpu_ep: str | None = None
    ep_options: dict[str, str] = field(default_factory=dict)
    global_pool: tuple[int, int] | None = None  # (intra, inter)
    profiling_prefix: str | None = None
    cpu_mem_arena: bool | None = None  # None = ONNX Runtime's default (on)
    customops_libs: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> "OnnxOptions":
        """Validate ``settings.runtime_options``; raise ``ConfigError`` naming a bad option."""
        options = settings.runtime_options
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown ONNX option(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}",
                key=unknown[0],
            )
        # an empty value means "flag not given", as the original's string flags do
        given = {k: v for k, v in options.items() if v.strip() != ""}

        gpu_ep = None
        if "onnx_gpu_ep" in given:
            gpu_ep = given["onnx_gpu_ep"].strip().lower()
            if gpu_ep not in GPU_PROVIDERS:
                raise ConfigError(
                    f"unknown execution provider {given['onnx_gpu_ep']!r}; choose one of: "
                    f"{', '.join(GPU_PROVIDERS)}",
                    key="onnx_gpu_ep",
                )
        ep_options = _parse_pairs("onnx_ep_options", given.get("onnx_ep_options", ""))
        cpu_mem_arena = None
        if ep_options and gpu_ep is None:
            # as the original: without a GPU provider the options are the CPU provider's
            unknown_cpu = sorted(set(ep_options) - set(CPU_EP_OPTIONS))
            if unknown_cpu:
                raise ConfigError(
                    f"{unknown_cpu[0]!r} is not an option of the CPU execution provider (known: "
                    f"{', '.join(CPU_EP_OPTIONS)}); options of a GPU provider need onnx_gpu_ep",
                    key="onnx_ep_options",
                )
            cpu_mem_arena = _parse_bool("onnx_ep_options", ep_options.pop("use_arena"))

        global_pool = None
        if "onnx_global_thread_pool_options" in given:
            key = "onnx_global_thread_pool_options"
            pairs = _parse_pairs(key, given[key])
            allowed = {"intra_op_num_threads", "inter_op_num_threads"}
            extra = sorted(set(pairs) - allowed)
            if extra:
                raise ConfigError(f"unknown setting {extra[0]!r}; known: {', '.join(sorted(allowed))}",
                                  key=key)
            sizes = []
            for name in ("intra_op_num_threads", "inter_op_num_threads"):
                raw = pairs.get(name, "0")
                try:
                    number = int(raw)
                except ValueError:
                    raise ConfigError(f"{name} must be an integer, got {raw!r}", key=key) from None
                if number < 0:
                    raise ConfigError(f"{name} must be >= 0, got {number}", key=key)
                sizes.append(number)
            global_pool = (sizes[0], sizes[1])

        return cls(
            intra_op_threads=settings.intra_op_parallelism,
            inter_op_threads=settings.inter_op_parallelism,
            parallel_mode=_parse_bool("onnx_use_parallel_mode", given["onnx_use_parallel_mode"])
            if "onnx_use_parallel_mode" in given
            else False,
            memory_pattern=_parse_bool("onnx_use_memory_pattern", given["onnx_use_memory_pattern"])
            if "onnx_use_memory_pattern" in given
            else None,
            allow_spinning=_parse_bool("onnx_allow_spinning", given["onnx_allow_spinning"])
            if "onnx_allow_spinning" in given
            else False,
            gpu_ep=gpu_ep,
            ep_options=ep_options,
            global_pool=global_pool,
            profiling_prefix=given.get("profiling"),
            cpu_mem_arena=cpu_mem_arena,
            customops_libs=tuple(str(path) for path in settings.customops_libs),
        )


def register_custom_ops(so: ort.SessionOptions, libraries: tuple[str, ...]) -> None:
    """Load each custom-op library into ``so``; ``ConfigError`` naming the one that fails."""
    for library in libraries:
        try:
            so.register_custom_ops_library(library)
        except Exception as exc:  # ONNX Runtime raises a bare RuntimeError/Fail
            raise ConfigError(f"ONNX Runtime cannot load custom-op library {library}: {exc}",
                              key="customops_libs") from None


def _use_global_pool(sizes: tuple[int, int]) -> None:
    """Create the process-wide pool once; a second, different request is a config error."""
    global _global_pool_sizes
    with _global_pool_lock:
        if _global_pool_sizes is None:
            try:
                ort_state.set_global_thread_pool_sizes(*sizes)
            except Exception as exc:  # the environment already exists without a global pool
                raise ConfigError(
                    f"cannot create the global thread pool now ({exc}); it must be set "
                    "before the first model loads",
                    key="onnx_global_thread_pool_options",
                ) from exc
            _global_pool_sizes = sizes
        elif _global_pool_sizes != sizes:
            raise ConfigError(
                f"the process already uses a global pool of {_global_pool_sizes}, "
                f"cannot also use {sizes}",
                key="onnx_global_thread_pool_options",
            )


def session_options(options: OnnxOptions) -> tuple[ort.SessionOptions, list]:
    """Build ONNX Runtime ``SessionOptions`` and the provider list for ``options``."""
    so = ort.SessionOptions()
    if options.global_pool is not None:
        _use_global_pool(options.global_pool)
    if _global_pool_sizes is not None:
        # once a global pool exists, ONNX Runtime refuses per-session pools
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        # Spinning threads burn a core each while idle; with one intra-op thread
        # there is no pool at all (the calling thread computes), and above that
        # the cores are better left to gRPC and the converter between batches.
        spin = "1" if options.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if options.parallel_mode else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if options.memory_pattern is not None:
        so.enable_mem_pattern = options.memory_pattern
    if options.profiling_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = options.profiling_prefix
    if options.cpu_mem_arena is not None:
        so.enable_cpu_mem_arena = options.cpu_mem_arena
    register_custom_ops(so, options.customops_libs)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    providers: list = []
    if options.gpu_ep is not None:
        available = set(ort.get_available_providers())
        wanted = GPU_PROVIDERS[options.gpu_ep]
        usable = [name for name in wanted if name in available]
        if usable:
            # the options are for the provider the user named; a fallback (CUDA
            # behind TensorRT) runs with its defaults
            providers.append((usable[0], dict(options.ep_options)))
            providers.extend(usable[1:])
        else:
            logger.warning(
                "execution provider %s (%s) is not available in this onnxruntime build "
                "(available: %s); running on CPU",
                options.gpu_ep, "/".join(wanted), ", ".join(sorted(available)),
            )
    providers.append("CPUExecutionProvider")
    return so, providers


def _tensor_spec(arg) -> TensorSpec:
    """TensorSpec of one ``NodeArg``; symbolic or unknown dimensions become -1."""
    dtype = ONNX_DTYPES.get(arg.type)
    if dtype is None:
        raise RuntimeFailure(f"{arg.name!r} has type {arg.type}; navi serves tensors only")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or ()))
    return TensorSpec(arg.name, dtype, shape)


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """A string tensor as ONNX Runtime's Python API takes it: ``str`` elements.

    Given ``bytes`` it would store their ``repr`` (``b'abc'`` becomes the text
    "b'abc'"); ONNX strings are UTF-8, so bytes are decoded as such.
    """
    flat = array.ravel()
    if flat.size and isinstance(flat[0], str) and all(isinstance(v, str) for v in flat):
        return array
    try:
        text = [bytes(v).decode("utf-8") if isinstance(v, (bytes, bytearray, memoryview)) else str(v)
                for v in flat]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {name!r}: ONNX string tensors hold UTF-8 text ({exc})") from None
    return np.array(text, dtype=object).reshape(array.shape)


class OnnxModel(LoadedModel):
    """One ONNX model version loaded into an ``InferenceSession``."""

    def __init__(self, session: ort.InferenceSession, path: Path, options: OnnxOptions,
                 shared: SharedWeights | None = None):
        self._session: ort.InferenceSession | None = session
        self.path = path
        self.options = options
        #: the mapped weights the session computes from: they must outlive it
        self.shared = shared
        meta = session.get_modelmeta()
        self._signature = Signature(
            inputs=tuple(_tensor_spec(arg) for arg in session.get_inputs()),
            outputs=tuple(_tensor_spec(arg) for arg in session.get_outputs()),
            extra={
                "runtime": "onnx",
                "providers": tuple(session.get_providers()),
                "producer": meta.producer_name,
                "graph": meta.graph_name,
                "metadata": dict(meta.custom_metadata_map),
            },
        )
        self._output_names = tuple(spec.name for spec in self._signature.outputs)
        self._input_names = frozenset(spec.name for spec in self._signature.inputs)
        self._string_inputs = tuple(spec.name for spec in self._signature.inputs
                                    if spec.dtype == np.dtype(object))
        # The Python wrapper's run() re-validates names and OrtValue ownership
        # and, for GPU providers, falls back to CPU after a provider failure.
        # With the CPU provider alone only the name check matters (done below,
        # once), and calling the C++ session directly saves ~5 us per batch.
        direct = getattr(session, "_sess", None)
        cpu_only = tuple(session.get_providers()) == ("CPUExecutionProvider",)
        self._direct_run = direct.run if cpu_only and direct is not None else None

    @property
    def signature(self) -> Signature:
        """The model's inputs and outputs as ONNX Runtime reports them."""
        return self._signature

    @property
    def providers(self) -> tuple[str, ...]:
        """Execution providers the session actually uses, in priority order."""
        return tuple(self._signature.extra["providers"])

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        """Run one batch; ONNX Runtime releases the GIL while it computes.

        Bad names, dtypes or shapes raise ``InvalidInput``; any other failure
        inside ONNX Runtime raises ``RuntimeFailure``.
        """
        session = self._session
        if session is None:
            raise RuntimeFailure(f"model {self.path} is closed")
        names = tuple(output_names) or self._output_names
        if not self._input_names <= inputs.keys():
            missing = sorted(self._input_names - inputs.keys())
            raise InvalidInput(f"model {self.path} needs input(s) {', '.join(missing)}")
        feeds = inputs if type(inputs) is dict else dict(inputs)
        if self._string_inputs:
            feeds = dict(feeds)
            for name in self._string_inputs:
                feeds[name] = _as_text(name, feeds[name])
        try:
            direct = self._direct_run
            if direct is not None:
                results = direct(list(names), feeds, None)
            else:
                results = session.run(list(names), feeds)
        except ort_state.InvalidArgument as exc:
            raise InvalidInput(str(exc)) from exc
        except ValueError as exc:  # raised by the Python wrapper for missing inputs
            raise InvalidInput(str(exc)) from exc
        except Exception as exc:
            raise RuntimeFailure(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(names, results))

    def close(self) -> None:
        """Drop the session (its memory goes once in-flight runs finish)."""
        session, self._session = self._session, None
        self._direct_run = None
        if session is not None and self.options.profiling_prefix:
            profile = session.end_profiling()
            logger.info("ONNX Runtime profile of %s written to %s", self.path, profile)
        del session  # a run still in flight holds its own reference; the mapping outlives it
        if self.shared is not None:
            # the entry's files may go now; pages stay mapped while this process holds the arrays
            release(self.shared)


class OnnxRuntime(Runtime):
    """``--runtime onnx``: loads ``model.onnx`` from a version directory."""

    name = "onnx"
    model_filename = "model.onnx"

    @staticmethod
    def _share(path: Path, settings: ModelSettings, options: OnnxOptions) -> SharedWeights | None:
        """The version's weights mapped from the fleet's cache, or None (the reason logged once)."""
        if settings.shared_weights_dir is None:
            return None
        if options.gpu_ep is not None:
            log_once(path, f"execution provider {options.gpu_ep} keeps its own copy on the device")
            return None
        try:
            return open_shared(path, settings.shared_weights_dir)
        except NotShared as reason:
            log_once(path, str(reason))
            return None

    def check_options(self, settings: ModelSettings) -> OnnxOptions:
        """Parse the model's ONNX options now (start-up), raising ``ConfigError`` if bad.

        Custom-op libraries are loaded once into a throwaway ``SessionOptions``
        so that a wrong path or a library built for another ONNX Runtime stops
        start-up, not each version's load.
        """
        options = OnnxOptions.from_settings(settings)
        register_custom_ops(ort.SessionOptions(), options.customops_libs)
        return options

    def load(self, version_dir: Path, settings: ModelSettings) -> OnnxModel:
        """Create an ``InferenceSession`` for ``version_dir/model.onnx`` with the model's options."""
        options = OnnxOptions.from_settings(settings)
        path = Path(version_dir) / self.model_filename
        if not path.is_file():
            raise RuntimeFailure(f"{path} does not exist")
        so, providers = session_options(options)
        shared = self._share(path, settings, options)
        if shared is not None:
            shared.add_to(so)
        try:
            session = ort.InferenceSession(str(shared.model_path if shared else path), sess_options=so,
                                           providers=providers)
        except Exception as exc:
            if shared is None:
                raise RuntimeFailure(f"ONNX Runtime cannot load {path}: {exc}") from exc
            release(shared)
            log_once(path, f"ONNX Runtime refused the shared weights ({exc})", logging.WARNING)
            return self.load(version_dir, settings.model_copy(update={"shared_weights_dir": None}))
        model = OnnxModel(session, path, options, shared)
        requested = [p for p in providers if p != "CPUExecutionProvider"]
        if requested and model.providers[0] == "CPUExecutionProvider":
            # listed as available but failed to start (e.g. CUDA libraries missing):
            # ONNX Runtime quietly fell back, so say it where operators look
            logger.warning("%s: execution provider %s did not start; running on CPU",
                           path, options.gpu_ep)
        logger.info(
            "loaded %s (providers %s, intra-op threads %d, inter-op threads %d%s)",
            path, ",".join(model.providers), options.intra_op_threads, options.inter_op_threads,
            f", {shared.shared_bytes / 2**20:.0f} MiB of weights mapped from {shared.model_path.parent}"
            if shared else "",
        )
        return model


__all__ = ["CPU_EP_OPTIONS", "GPU_PROVIDERS", "ONNX_DTYPES", "OPTION_KEYS", "OnnxModel", "OnnxOptions", "OnnxRuntime",
           "register_custom_ops", "session_options"]
