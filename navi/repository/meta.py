"""META.json: per-model overrides re-read at every poll.

The file maps a model name to an object whose keys may be ``version`` (pin
one version; an integer or a version directory name), ``intra_op_parallelism``,
``inter_op_parallelism``, ``labels`` (label -> version, e.g.
``{"stable": 1, "canary": 2}``), ``report_continuous_feature_ids`` /
``report_discrete_feature_ids`` (a list of ids or a comma-separated string;
they replace the flags' for that model), any ``BatchingSettings`` field either
at the top level or under ``batching``, and the original's flag spellings
``batch_time_out_millis`` / ``batch_drop_millis``. Values may be strings, as
the original wrote them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from navi.errors import ConfigError
from navi.repository.layout import parse_version
from navi.settings import BatchingSettings, ModelSettings, parse_feature_ids

META_FILENAME = "META.json"
_BATCHING_FIELDS = set(BatchingSettings.model_fields)
_BATCHING_ALIASES = {
    "batch_time_out_millis": "batch_timeout_ms",
    "batch_drop_millis": "batch_drop_ms",
}
_MODEL_FIELDS = ("intra_op_parallelism", "inter_op_parallelism")
_FEATURE_ID_FIELDS = ("report_continuous_feature_ids", "report_discrete_feature_ids")


@dataclass(frozen=True)
class ModelMeta:
    """The overrides META.json gives one model."""

    version: int | None = None
    labels: dict[str, int] = field(default_factory=dict)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    feature_id_overrides: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batching_overrides: dict[str, Any] = field(default_factory=dict)

    def apply(self, settings: ModelSettings) -> ModelSettings:
        """``settings`` with these overrides, validated (raises ConfigError)."""
        if not self.model_overrides and not self.batching_overrides and not self.feature_id_overrides:
            return settings
        data = settings.model_dump()
        data.update(self.model_overrides)
        data.update(self.feature_id_overrides)
        data["batching"] = {**data["batching"], **self.batching_overrides}
        try:
            return ModelSettings.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(str(exc), source=META_FILENAME, key=settings.name) from exc


def _as_version(value: Any, where: str) -> int:
    version = parse_version(str(value))
    if version is None:
        raise ConfigError(f"{value!r} is not a version", source=META_FILENAME, key=where)
    return version


def parse_meta(data: Any) -> dict[str, ModelMeta]:
    """Model name -> ModelMeta from the decoded JSON; ConfigError naming the bad key."""
    if not isinstance(data, dict):
        raise ConfigError("top level must be an object of model names", source=META_FILENAME)
    metas = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError("must be an object", source=META_FILENAME, key=name)
        version = None
        labels: dict[str, int] = {}
        model_overrides: dict[str, Any] = {}
        feature_ids: dict[str, tuple[int, ...]] = {}
        batching: dict[str, Any] = {}
        for key, value in entry.items():
            where = f"{name}.{key}"
            if key == "version":
                version = None if value in (None, "") else _as_version(value, where)
            elif key == "labels":
                if not isinstance(value, dict):
                    raise ConfigError("must map labels to versions", META_FILENAME, where)
                labels = {str(k): _as_version(v, f"{where}.{k}") for k, v in value.items()}
            elif key in _MODEL_FIELDS:
                model_overrides[key] = value
            elif key in _FEATURE_ID_FIELDS:
                try:
                    feature_ids[key] = parse_feature_ids(value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(str(exc), META_FILENAME, where) from None
            elif key == "batching":
                if not isinstance(value, dict):
                    raise ConfigError("must be an object", META_FILENAME, where)
                for bkey, bvalue in value.items():
                    bkey = _BATCHING_ALIASES.get(bkey, bkey)
                    if bkey not in _BATCHING_FIELDS:
                        raise ConfigError("unknown batching setting", META_FILENAME,
                                          f"{where}.{bkey}")
                    batching[bkey] = bvalue
            elif _BATCHING_ALIASES.get(key, key) in _BATCHING_FIELDS:
                batching[_BATCHING_ALIASES.get(key, key)] = value
            else:
                raise ConfigError(
                    "unknown key (expected version, labels, intra_op_parallelism, "
                    "inter_op_parallelism, report_continuous_feature_ids, "
                    "report_discrete_feature_ids, batching or a batching setting)",
                    META_FILENAME, where,
                )
        # validate values now, so a bad file is refused whole and the last good stays
        try:
            BatchingSettings.model_validate(batching)
        except ValidationError as exc:
            raise ConfigError(str(exc), source=META_FILENAME, key=f"{name}.batching") from exc
        for key, value in model_overrides.items():
            try:
                number = int(value)
            except (TypeError, ValueError):
                number = -1
            if number < 0:
                raise ConfigError("must be an integer >= 0", META_FILENAME, f"{name}.{key}")
            model_overrides[key] = number
        metas[name] = ModelMeta(version, labels, model_overrides, feature_ids, batching)
    return metas


def read_meta(path: Path) -> dict[str, ModelMeta] | None:
    """Parse META.json at ``path``; None when the file does not exist.

    Raises ConfigError (naming the key) when it is malformed.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc}", source=str(path)) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc}", source=str(path)) from exc
    return parse_meta(data)
