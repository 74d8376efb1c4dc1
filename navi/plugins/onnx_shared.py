"""Large ONNX weights mapped from one file by every worker process (``--workers N``).

Each worker of a fleet loads its own ``InferenceSession``; left alone, each
holds a private copy of every initializer, so N workers hold N copies of
the weights. Here the first worker to load a model version extracts its
large initializers (``MIN_TENSOR_BYTES`` and up) into ``weights.bin`` under
the fleet's cache directory (``ModelSettings.shared_weights_dir``), each
at a page-aligned offset, next to a copy of the model whose initializers
point there as ONNX external data. Every worker then maps ``weights.bin``
read-only (``np.memmap``) and hands each tensor to its session with
``SessionOptions.add_initializer``, which ONNX Runtime documents as using
the caller's buffer as is (no copy) on CPU, and keeps out of constant
folding. The pages are the file's, in the page cache: one copy for the
host however many workers map it, and clean, so the kernel can reclaim them
under pressure. The session loads the stripped model, so no worker parses
the weights' protobuf bytes either (load peak: the weights once, not twice).

Kernels that repack a weight at load (MatMul/Gemm prepacking) still make a
private packed copy in each worker; Gather tables (embeddings, the bulk of
a ranking model's bytes) are used in place. Figures: benchmarks/RESULTS.md,
"Workers".

An entry's directory name is a hash of the version's files (path, size,
mtime, inode), so a rewritten model gets a new entry. A worker holds a
shared ``flock`` on the entry while its session lives; the last one to
close deletes the entry (a mapped file stays valid once unlinked). The
supervisor removes the whole cache directory when the fleet stops.

Anything that cannot be shared (a GPU provider, a model below
``MIN_TOTAL_BYTES`` of large tensors, an unwritable cache, a tensor type
numpy cannot hold) is loaded the ordinary way; the reason is logged once
per model file.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort


logger = logging.getLogger(__name__)

#: initializers at least this big are shared; smaller ones stay in the model
MIN_TENSOR_BYTES = 1 << 20
#: a model whose large initializers total less than this is not worth a cache entry
MIN_TOTAL_BYTES = 16 << 20
#: each tensor starts at a multiple of this in weights.bin (page and cache-line aligned)
ALIGN_BYTES = 4096

WEIGHTS_FILE = "weights.bin"
MODEL_FILE = "model.onnx"
INDEX_FILE = "index.json"

_logged_lock = threading.Lock()
_logged: set[tuple[str, str]] = set()


class NotShared(Exception):
    """Why a model's weights are loaded the ordinary way (logged once, never an error)."""


def log_once(path: Path, reason: str, level: int = logging.INFO) -> None:
    """Log why ``path`` is not shared, once per (file, reason) in this process."""
    with _logged_lock:
        if (str(path), reason) in _logged:
            return
        _logged.add((str(path), reason))
    logger.log(level, "%s: weights not shared between workers: %s", path, reason)


@dataclass
class SharedWeights:
    """One worker's view of a cache entry; keep it alive as long as the session."""

    model_path: Path  # the stripped model, to load instead of the original
    arrays: dict[str, np.ndarray]
    shared_bytes: int
    _values: list = field(default_factory=list)  # OrtValues added to a SessionOptions
    _lock_fd: int | None = None
    _entry: Path | None = None

    def add_to(self, so: ort.SessionOptions) -> None:
        """Give every shared tensor to ``so`` (ONNX Runtime uses the mapped bytes in place)."""
        for name, array in self.arrays.items():
            value = ort.OrtValue.ortvalue_from_numpy(array)
            self._values.append(value)
            so.add_initializer(name, value)

    def close(self) -> None:
        """Release this process's hold (through ``release``); the last process deletes the entry."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another worker still serves from it
            if self._entry is not None:
                shutil.rmtree(self._entry, ignore_errors=True)
        finally:
            os.close(fd)


def entry_key(version_dir: Path) -> str:
    """Names the cache entry of a version directory's current files."""
    digest = hashlib.sha256(str(version_dir.resolve()).encode())
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"\0{path.relative_to(version_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}"
                      .encode())
    return digest.hexdigest()[:32]


def _numpy_dtype(data_type: int) -> np.dtype | None:
    from onnx import TensorProto, helper

    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    # numpy's own numeric types only: bfloat16 and the float8 types come as
    # ml_dtypes extension types, which ONNX Runtime's numpy bridge does not take
    if dtype.kind not in "biuf" or dtype.isbuiltin != 1:
        return None
    return dtype if helper.np_dtype_to_tensor_dtype(dtype) == data_type else None


def extract(model_file: Path, entry: Path) -> None:
    """Write ``entry``: the large initializers of ``model_file`` and a model that refers to them.

    Raises ``NotShared`` when there is too little to share.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(model_file))  # external data of the original included
    graph_inputs = {value.name for value in model.graph.input}
    chosen = []
    for tensor in model.graph.initializer:
        dtype = _numpy_dtype(tensor.data_type)
        count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
        # an initializer that is also a graph input may be fed by the caller: leave it to ONNX Runtime
        if dtype is None or tensor.name in graph_inputs or count * dtype.itemsize < MIN_TENSOR_BYTES:
            continue
        chosen.append((tensor, dtype))
    total = sum(int(np.prod(t.dims, dtype=np.int64)) * d.itemsize for t, d in chosen)
    if total < MIN_TOTAL_BYTES:
        raise NotShared(f"{total / 2**20:.1f} MiB in initializers of {MIN_TENSOR_BYTES >> 20} MiB or more, "
                        f"below the {MIN_TOTAL_BYTES >> 20} MiB worth sharing")
    index = []
    with open(entry / WEIGHTS_FILE, "wb") as out:
        for tensor, dtype in chosen:
            array = np.ascontiguousarray(numpy_helper.to_array(tensor), dtype=dtype)
            offset = -(-out.tell() // ALIGN_BYTES) * ALIGN_BYTES
            out.seek(offset)
            out.write(array.tobytes())
            index.append({"name": tensor.name, "dtype": dtype.str, "shape": list(array.shape), "offset": offset})
            # the stripped model refers to the same bytes as ONNX external data, so
            # it stays a valid model on its own; ONNX Runtime takes them from add_initializer
            data_type, dims, name = tensor.data_type, list(tensor.dims), tensor.name
            tensor.Clear()
            tensor.name, tensor.data_type = name, data_type
            tensor.dims.extend(dims)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(array.nbytes))):
                item = tensor.external_data.add()
                item.key, item.value = key, value
    onnx.save(model, str(entry / MODEL_FILE))
    (entry / INDEX_FILE).write_text(json.dumps(index))


#: exit code of ``python -m navi.plugins.onnx_shared`` for "nothing worth sharing" (reason on stderr)
_NOT_SHARED_EXIT = 3


def extract_in_child(model_file: Path, entry: Path) -> None:
    """``extract`` in a child process: parsing the model (and importing onnx) would
    leave a worker holding about the model's size again in heap it never uses."""
    done = subprocess.run([sys.executable, "-m", "navi.plugins.onnx_shared", str(model_file), str(entry)],
                          capture_output=True, text=True)
    reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
    if done.returncode == _NOT_SHARED_EXIT:
        raise NotShared(reason)
    if done.returncode != 0:
        raise NotShared(f"extracting the weights failed: {reason}")


def _map(entry: Path) -> tuple[dict[str, np.ndarray], int]:
    index = json.loads((entry / INDEX_FILE).read_text())
    mapped = np.memmap(entry / WEIGHTS_FILE, dtype=np.uint8, mode="r")
    arrays = {}
    for item in index:
        dtype = np.dtype(item["dtype"])
        count = int(np.prod(item["shape"], dtype=np.int64))
        arrays[item["name"]] = np.ndarray(item["shape"], dtype=dtype, buffer=mapped, offset=item["offset"])
        if arrays[item["name"]].nbytes != count * dtype.itemsize:
            raise NotShared(f"cache entry {entry} is damaged")
    return arrays, sum(a.nbytes for a in arrays.values())


def _acquire(model_file: Path, cache_dir: Path, entry: Path) -> SharedWeights:
    """Map ``entry`` (extracting it first if needed) and hold it in use."""
    try:
        extract_fd = os.open(f"{entry}.extract", os.O_RDWR | os.O_CREAT, 0o600)
        use_fd = os.open(f"{entry}.inuse", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise NotShared(f"cache {cache_dir}: {error}") from None
    try:
        for _ in range(3):
            # one extractor at a time, so two workers never write the same 100s of MB
            fcntl.flock(extract_fd, fcntl.LOCK_EX)
            try:
                if not (entry / INDEX_FILE).is_file():
                    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
                    try:
                        extract_in_child(model_file, staging)
                        shutil.rmtree(entry, ignore_errors=True)
                        staging.rename(entry)
                    except BaseException:
                        shutil.rmtree(staging, ignore_errors=True)
                        raise
                    logger.info("%s: extracted large initializers to %s for the workers to share",
                                model_file, entry)
                # held while the session lives; waits only while a last closer deletes the entry
                fcntl.flock(use_fd, fcntl.LOCK_SH)
            finally:
                fcntl.flock(extract_fd, fcntl.LOCK_UN)
            if (entry / INDEX_FILE).is_file():
                break
            fcntl.flock(use_fd, fcntl.LOCK_UN)  # deleted meanwhile: extract again
        else:
            raise NotShared(f"cache entry {entry} kept being removed")
        arrays, shared_bytes = _map(entry)
    except NotShared:
        os.close(use_fd)
        raise
    except Exception as error:  # noqa: BLE001 - any failure here means: load the ordinary way
        os.close(use_fd)
        raise NotShared(f"{type(error).__name__}: {error}") from None
    finally:
        os.close(extract_fd)
    return SharedWeights(entry / MODEL_FILE, arrays, shared_bytes, _lock_fd=use_fd, _entry=entry)


#: entries this process has open -> (weights, holders): a version loaded twice in one
#: process maps its entry once (and flock would not tell two holders in one process apart)
_open_lock = threading.Lock()
_open: dict[Path, list] = {}


def open_shared(model_file: Path, cache_dir: Path) -> SharedWeights:
    """The shared weights of ``model_file``, extracting them first if no worker has;
    ``release`` them when the session is gone.

    Raises ``NotShared`` (with the reason) when this model is to be loaded the ordinary way.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        entry = cache_dir / entry_key(model_file.parent)
    except OSError as error:
        raise NotShared(f"cache {cache_dir}: {error}") from None
    with _open_lock:
        held = _open.get(entry)
        if held is None:
            held = _open[entry] = [_acquire(model_file, cache_dir, entry), 0]
        held[1] += 1
        return held[0]


def release(weights: SharedWeights) -> None:
    """One holder of ``weights`` is done; the process's last one lets the entry go."""
    with _open_lock:
        held = _open.get(weights._entry)
        if held is None or held[0] is not weights:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _open[weights._entry]
    weights.close()


__all__ = ["MIN_TENSOR_BYTES", "MIN_TOTAL_BYTES", "NotShared", "SharedWeights", "log_once", "open_shared", "release"]


if __name__ == "__main__":  # extract_in_child's child
    try:
        extract(Path(sys.argv[1]), Path(sys.argv[2]))
    except NotShared as why:
        print(why, file=sys.stderr)
        sys.exit(_NOT_SHARED_EXIT)
