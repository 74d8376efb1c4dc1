"""Model repository: version directories, META.json, loading, warmup and routing."""
from navi.repository.layout import ModelDirScanner, VersionDir, files_signature, parse_version
from navi.repository.meta import ModelMeta, parse_meta, read_meta
from navi.repository.registry import ModelRegistry, VersionStatus

__all__ = [
    "ModelDirScanner",
    "ModelMeta",
    "ModelRegistry",
    "VersionDir",
    "VersionStatus",
    "files_signature",
    "parse_meta",
    "parse_version",
    "read_meta",
]
