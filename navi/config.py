"""Build the one ``ServerSettings`` of ``navi serve`` from a config file and flags.

Layering, lowest first:

1. the settings' defaults;
2. ``--config FILE`` (YAML, or TOML by ``.toml`` suffix): the fields of
   ``ServerSettings``, a ``models`` list with one section per model (fields of
   ``ModelSettings``; ``name`` defaults to the last component of
   ``model_dir``; a relative ``model_dir`` is relative to the file), and an
   optional ``defaults`` section merged under every model section;
3. flags, with the original Navi's names. ``--model-dir`` (repeatable) picks
   the models: a file section of the same name still supplies that model's
   other values. A per-model flag given once applies to every model; given
   N times, the values go to the N models in ``--model-dir`` order.

Any bad value raises ``ConfigError`` naming where it came from: the flag
(``--max-batch-size: ...``) or the file key
(``navi.yaml: models[1].batching.max_batch_size: ...``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pydantic import ValidationError

from navi.errors import ConfigError
from navi.settings import ServerSettings, parse_bool, parse_feature_ids


def _names(value: str) -> tuple[str, ...]:
    """``--input a,b`` -> ("a", "b"); an empty value -> () (detect from the model)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _converter(value: str) -> str:
    value = value.strip().lower()
    if value in ("", "none", "false", "off", "no"):
        return "none"
    return value  # "home", "auto"; anything else is rejected by the settings' Literal


def _paths(value: Any) -> tuple[str, ...]:
    """``--customops-lib a.so,b.so`` -> ("a.so", "b.so") (comma-separated, as the original)."""
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


#: per-model flag -> (path inside a model section, value conversion)
PER_MODEL_FLAGS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "--runtime": (("runtime",), str),
    "--max-batch-size": (("batching", "max_batch_size"), int),
    "--batch-time-out-millis": (("batching", "batch_timeout_ms"), float),
    "--num-batch-threads": (("batching", "num_batch_threads"), int),
    "--batch-eager-when-idle": (("batching", "eager_when_idle"), parse_bool),
    "--batch-inline-when-idle": (("batching", "inline_when_idle"), parse_bool),
    "--input": (("inputs",), _names),
    "--output": (("outputs",), _names),
    "--intra-op-parallelism": (("intra_op_parallelism",), int),
    "--inter-op-parallelism": (("inter_op_parallelism",), int),
    "--serving-sig": (("serving_signature",), str),
    "--max-warmup-records": (("max_warmup_records",), int),
    "--onnx-use-converter": (("converter",), _converter),
}

#: flags given once that set a value of every model
ALL_MODELS_FLAGS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "--batch-drop-millis": (("batching", "batch_drop_ms"), float),
    "--max-batch-rows": (("batching", "max_batch_rows"), int),
    "--max-queued-requests": (("batching", "max_queued_requests"), int),
    "--max-queue-wait-millis": (("batching", "max_queue_wait_ms"), float),
    # the original's are process-wide too (every model's converter gets them all)
    "--onnx-report-discrete-feature-ids": (("report_discrete_feature_ids",), parse_feature_ids),
    "--onnx-report-continuous-feature-ids": (("report_continuous_feature_ids",), parse_feature_ids),
    "--customops-lib": (("customops_libs",), _paths),
}

#: ONNX Runtime flags -> key in ModelSettings.runtime_options (strings, parsed by the plugin)
ONNX_OPTION_FLAGS: dict[str, str] = {
    "--onnx-ep-options": "onnx_ep_options",
    "--onnx-gpu-ep": "onnx_gpu_ep",
    "--onnx-use-parallel-mode": "onnx_use_parallel_mode",
    "--onnx-use-memory-pattern": "onnx_use_memory_pattern",
    "--onnx-global-thread-pool-options": "onnx_global_thread_pool_options",
    "--profiling": "profiling",
}

#: server flag -> ServerSettings field
SERVER_FLAGS: dict[str, str] = {
    "--host": "host",
    "--port": "port",
    "--prometheus-port": "prometheus_port",
    "--rest-api-port": "rest_api_port",
    "--prometheus-host": "prometheus_host",
    "--modelsync-timeout-secs": "modelsync_timeout_s",
    "--version-settle-secs": "version_settle_s",
    "--model-check-interval-secs": "model_check_interval_s",
    "--meta-json-dir": "meta_json_dir",
    "--modelsync-cli": "modelsync_cli",
    "--versions-per-model": "versions_per_model",
    "--ssl-dir": "ssl_dir",
    "--max-message-bytes": "max_message_bytes",
    "--grpc-threads": "grpc_threads",
    "--grpc-max-threads": "grpc_max_threads",
    "--grpc-max-waiting-requests": "grpc_max_waiting_requests",
    "--max-connections": "max_connections",
    "--handshake-timeout-secs": "handshake_timeout_s",
    "--http-idle-timeout-secs": "http_idle_timeout_s",
    "--grpc-stream-window-bytes": "grpc_stream_window_bytes",
    "--max-request-rows": "max_request_rows",
    "--max-request-decoded-bytes": "max_request_decoded_bytes",
    "--shutdown-grace-secs": "shutdown_grace_s",
    "--workers": "workers",
    "--share-weights": "share_weights",
    "--worker-cpus": "worker_cpus",
}

#: the original's flag -> navi's flag of the same meaning; navi's own wins when both are given
SERVER_FLAG_ALIASES: dict[str, str] = {
    # the original's tokio workers handle the requests: navi's handler threads do
    "--num-worker-threads": "--grpc-threads",
}


#: a file that names its version directory's runtime when neither a flag nor the
#: config file does: the original picks the runtime by binary (navi for
#: TensorFlow, navi_onnx, navi_torch), so its launch scripts never say it.
#: Each name is its plugin's ``model_filename`` (tests/unit/test_compat_flags.py).
RUNTIME_MARKERS: tuple[tuple[str, str], ...] = (
    ("model.onnx", "onnx"),
    ("saved_model.pb", "tf"),
    ("saved_model.pbtxt", "tf"),
    ("model.pt", "torch"),
)


def _version_order(name: str) -> tuple[int, Any]:
    return (1, int(name)) if name.isdigit() else (0, name)


def detect_runtime(model_dir: Path) -> str | None:
    """The runtime of the newest version directory under ``model_dir`` that holds a
    marker file (``RUNTIME_MARKERS``); None when there is none yet (e.g. before
    ``--modelsync-cli`` fetched it: the default runtime then applies)."""
    try:
        versions = sorted((d for d in Path(model_dir).iterdir() if d.is_dir()),
                          key=lambda d: _version_order(d.name), reverse=True)
    except OSError:
        return None
    for version_dir in versions:
        for filename, runtime in RUNTIME_MARKERS:
            if (version_dir / filename).exists():
                return runtime
    return None


def load_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or TOML (``.toml``) config file into a dict; ``ConfigError`` if unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read: {error.strerror or error}", source=str(path)) from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # yaml.YAMLError / tomllib.TOMLDecodeError carry the position
        raise ConfigError(f"not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'}: {error}",
                          source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of settings", source=str(path))
    return data


def model_name_of(model_dir: str | Path) -> str:
    """A model's name: the last path component of its directory (as the original)."""
    return Path(str(model_dir).rstrip("/\\")).name


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two sections; ``top`` wins, nested mappings merge."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(section: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        child = section.get(key)
        if not isinstance(child, dict):
            child = {}
            section[key] = child
        section = child
    section[path[-1]] = value


def _loc_text(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _file_models(data: dict[str, Any], source: str, base_dir: Path) -> list[dict[str, Any]]:
    models = data.pop("models", None) or []
    defaults = data.pop("defaults", None) or {}
    if not isinstance(models, list):
        raise ConfigError("must be a list of model sections", source=source, key="models")
    if not isinstance(defaults, dict):
        raise ConfigError("must be a mapping of model settings", source=source, key="defaults")
    sections = []
    for index, section in enumerate(models):
        if not isinstance(section, dict):
            raise ConfigError("must be a mapping", source=source, key=f"models[{index}]")
        section = _merge(defaults, section)
        if "model_dir" not in section:
            raise ConfigError("model_dir is required", source=source, key=f"models[{index}]")
        model_dir = Path(str(section["model_dir"]))
        if not model_dir.is_absolute():
            model_dir = base_dir / model_dir
        section["model_dir"] = model_dir
        section.setdefault("name", model_name_of(model_dir))
        sections.append(section)
    data["_defaults"] = defaults
    return sections


def build_settings(
    flags: Mapping[str, Any],
    config_path: Path | None = None,
    default_model_dirs: Sequence[Path] | Callable[[], Sequence[Path]] = (),
) -> ServerSettings:
    """The validated ``ServerSettings`` for ``flags`` layered over ``config_path``.

    ``flags`` holds only the flags the user gave, by flag name; per-model and
    ``--model-dir`` values are sequences. ``default_model_dirs`` serve when
    neither ``--model-dir`` nor the file names a model (a callable is only
    called then: finding the demo model may build it).
    """
    data: dict[str, Any] = {}
    source = ""
    base_dir = Path.cwd()
    if config_path is not None:
        source = str(config_path)
        data = load_config_file(config_path)
        base_dir = Path(config_path).resolve().parent
    file_models = _file_models(data, source, base_dir)
    defaults = data.pop("_defaults")

    # origin of each value that did not come from the file: path -> flag
    origin: dict[tuple[Any, ...], str] = {}

    if flags.get("--model-dir"):
        by_name = {section["name"]: section for section in file_models}
        models = []
        for model_dir in flags["--model-dir"]:
            name = model_name_of(model_dir)
            base = by_name.get(name, defaults)
            models.append(_merge(base, {"name": name, "model_dir": Path(model_dir)}))
        for index in range(len(models)):
            origin[("models", index, "model_dir")] = "--model-dir"
            origin[("models", index, "name")] = "--model-dir"
    elif file_models:
        models = file_models
    else:
        if callable(default_model_dirs):
            default_model_dirs = default_model_dirs()
        models = [
            _merge(defaults, {"name": model_name_of(d), "model_dir": Path(d)}) for d in default_model_dirs
        ]

    for flag, (path, convert) in PER_MODEL_FLAGS.items():
        values = flags.get(flag)
        if not values:
            continue
        values = list(values)
        if len(values) == 1:
            values = values * len(models)
        elif len(values) != len(models):
            raise ConfigError(
                f"given {len(values)} times for {len(models)} model(s); give it once (all "
                "models) or once per --model-dir, in the same order",
                source=flag,
            )
        for index, (section, value) in enumerate(zip(models, values)):
            _set_path(section, path, _convert(flag, convert, value))
            origin[("models", index, *path)] = flag

    for flag, (path, convert) in ALL_MODELS_FLAGS.items():
        if flag in flags and flags[flag] is not None:
            value = _convert(flag, convert, flags[flag])
            for index, section in enumerate(models):
                _set_path(section, path, value)
                origin[("models", index, *path)] = flag

    for section in models:
        if "runtime" not in section:
            detected = detect_runtime(section["model_dir"])
            if detected is not None:
                section["runtime"] = detected

    onnx_options = {key: str(flags[flag]) for flag, key in ONNX_OPTION_FLAGS.items()
                    if flags.get(flag) not in (None, "")}
    if onnx_options:
        for index, section in enumerate(models):
            # The original's ONNX flags are process-wide; they mean nothing to
            # a TensorFlow or Torch model, whose plugin would reject them.
            if str(section.get("runtime", "onnx")).strip().lower() in ("onnx", "onnxruntime"):
                options = section.setdefault("runtime_options", {})
                if isinstance(options, dict):
                    options.update(onnx_options)
                for flag, key in ONNX_OPTION_FLAGS.items():
                    if key in onnx_options:
                        origin[("models", index, "runtime_options", key)] = flag

    for flag, field in SERVER_FLAGS.items():
        if flag in flags and flags[flag] is not None:
            data[field] = flags[flag]
            origin[(field,)] = flag
    for alias, flag in SERVER_FLAG_ALIASES.items():
        if flags.get(alias) is not None and flags.get(flag) is None:
            field = SERVER_FLAGS[flag]
            data[field] = flags[alias]
            origin[(field,)] = alias

    names = [section.get("name") for section in models]
    for index, name in enumerate(names):
        if names.index(name) != index:
            where = origin.get(("models", index, "name"))
            raise ConfigError(
                f"model name {name!r} is used twice (a model's name is the last component of "
                "its directory)",
                source=where or source,
                key="" if where else f"models[{index}].name",
            )

    data["models"] = models
    try:
        return ServerSettings.model_validate(data)
    except ValidationError as error:
        raise _config_error(error, origin, source) from None


def _convert(flag: str, convert: Callable[[Any], Any], value: Any) -> Any:
    try:
        return convert(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid value {value!r}: {error}", source=flag) from None


def _config_error(error: ValidationError, origin: Mapping[tuple[Any, ...], str], source: str) -> ConfigError:
    """The first validation problem as a ConfigError naming its flag or file key."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    message = first["msg"]
    if "input" in first and first["type"] != "missing" and not isinstance(first["input"], dict):
        message = f"{message} (got {first['input']!r})"
    for cut in range(len(loc), 0, -1):
        flag = origin.get(loc[:cut])
        if flag is not None:
            key = _loc_text(loc[:2]) if loc[0] == "models" and len(loc) > 2 else ""
            return ConfigError(message, source=flag, key=key)
    return ConfigError(message, source=source or "settings", key=_loc_text(loc))
