"""ModelRegistry: which versions of which models are loaded, and routing to them.

Life of a version: its directory appears (START), is chosen (the
``versions_per_model`` newest, or the one META.json pins, plus any version a
label names) and loaded and warmed up on the load pool (LOADING), then takes
traffic (AVAILABLE). Once a newer chosen version is AVAILABLE and no load of
that model is pending, versions no longer chosen leave the routing table
(UNLOADING); after a short grace, for requests that already picked them, their
queues are drained and the model closed (END). A failed load ends in END with
the error and is not retried until the version's files change; whatever was
serving keeps serving.

Reads (``get``) take no lock: each model's routing table is an immutable tuple
replaced whole on every change.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from navi.errors import (
    Code,
    ConfigError,
    ModelNotFound,
    ModelNotReady,
    ModelVersionNotFound,
    NaviError,
    quote,
)
from navi.pipeline import ServedModel
from navi.plugins.base import Runtime
from navi.repository.layout import ModelDirScanner, VersionDir, files_signature
from navi.repository.meta import ModelMeta
from navi.repository.warmup import warm_up
from navi.settings import ModelSettings, ServerSettings

log = logging.getLogger(__name__)

#: how long an evicted version keeps accepting requests that already picked it
#: (a request thread reads the routing table, then submits: microseconds apart,
#: but a loaded 2-core machine can stall a thread far longer)
UNLOAD_GRACE_S = 1.0

#: niceness added to load and unload threads: on a busy machine the scheduler then
#: prefers request and batch threads, so a large load barely moves their latency
LOAD_THREAD_NICE = 10

#: rescans at start-up while a version directory is still changing (``layout``'s rule)
STARTUP_SETTLE_TRIES = 3

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass(frozen=True)
class VersionStatus:
    """One version's state as GetModelStatus reports it."""

    version: int
    state: str
    error_code: Code | None = None
    error_message: str = ""


def _lower_thread_priority() -> None:
    """Raise this thread's niceness (Linux threads have their own); best effort."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + LOAD_THREAD_NICE)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: loads just run at normal priority


class _Version:
    """Mutable bookkeeping of one version directory (guarded by the registry lock)."""

    def __init__(self, vdir: VersionDir):
        self.version = vdir.version
        self.path = vdir.path
        self.state = START
        self.served: ServedModel | None = None
        self.loaded_settings: ModelSettings | None = None
        self.loading = False
        self.on_disk = True
        self.error_code: Code | None = None
        self.error_message = ""
        self.failed_signature: tuple | None = None
        self.failed_settings: ModelSettings | None = None


class _Model:
    """One configured model: its versions and its routing table."""

    def __init__(self, settings: ModelSettings, runtime: Runtime, settle_s: float = 0.0):
        self.name = settings.name
        self.base_settings = settings
        self.settings = settings
        self.runtime = runtime
        self.scanner = ModelDirScanner(settings.model_dir, runtime.is_complete, settle_s=settle_s)
        self.meta = ModelMeta()
        self.versions: dict[int, _Version] = {}
        # (version, ServedModel) pairs, newest first; replaced whole, read lock-free
        self.ready: tuple[tuple[int, ServedModel], ...] = ()
        self.pin_reported: int | None = None


class ModelRegistry:
    """Loads, swaps and routes to the versions of every configured model.

    ``start`` scans and loads (blocking until each model's first load attempt
    finished) and starts the watcher that re-polls every
    ``model_check_interval_s``; ``get`` routes a request; ``stop`` drains.
    """

    def __init__(
        self,
        settings: ServerSettings,
        metrics,
        runtimes: Callable[[str], Runtime] | None = None,
    ):
        if runtimes is None:
            from navi.plugins import resolve_runtime

            runtimes = resolve_runtime
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.RLock()
        self._models: dict[str, _Model] = {}
        for model_settings in settings.models:
            if model_settings.name in self._models:
                raise ConfigError("two models have the same name", key=model_settings.name)
            runtime = runtimes(model_settings.runtime)
            self._models[model_settings.name] = _Model(model_settings, runtime, settle_s=settings.version_settle_s)
        self._loads = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_loads, thread_name_prefix="navi-load",
            initializer=_lower_thread_priority,
        )
        self._pending: set[Future] = set()
        self._listeners: list[Callable[[str], None]] = []
        self._stopping = threading.Event()
        self._retiring: list[threading.Thread] = []
        self._watcher = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Scan, load every model's chosen versions (waiting for them), start polling."""
        from navi.repository.watcher import ModelWatcher

        self._watcher = ModelWatcher(self, self.settings, self.metrics)
        self._watcher.poll_once()
        # a version written just before start-up: give it its settle time now
        # rather than start serving nothing (a few tries: a directory that never
        # stops changing is left to the watcher)
        for _ in range(STARTUP_SETTLE_TRIES):
            if not self.has_pending_versions():
                break
            time.sleep(self.settings.version_settle_s)
            self._watcher.poll_once()
        self.wait_for_loads()
        self._watcher.start()

    def wait_for_loads(self, timeout_s: float | None = None) -> None:
        """Block until no load is pending (loads started by loads included)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = set(self._pending)
            if not pending:
                return
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait(pending, timeout=remaining)
            if deadline is not None and time.monotonic() >= deadline:
                return

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop polling and loading, answer every queued request, close every model."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.stop()
        self._loads.shutdown(wait=False, cancel_futures=True)
        closing = []
        with self._lock:
            for model in self._models.values():
                for entry in model.versions.values():
                    if entry.served is not None:
                        closing.append((model.name, entry.served))
                        entry.served = None
                        entry.state = END
                model.ready = ()
        threads = [
            threading.Thread(target=served.close, name=f"navi-close-{name}", daemon=True)
            for name, served in closing
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + grace_s
        for thread in threads + self._retiring:
            thread.join(max(0.0, deadline - time.monotonic()))
        for name, _ in closing:
            self._notify(name)

    # ----------------------------------------------------------------- routing

    def get(self, name: str, version: int | None = None, label: str | None = None) -> ServedModel:
        """The ServedModel for a request.

        No version and no label: the pinned version if META.json pins one and
        it is ready, else the newest ready one. Raises ``ModelNotFound``,
        ``ModelVersionNotFound`` (unknown or evicted version, unknown label) or
        ``ModelNotReady`` (nothing loaded yet, or that version still loading).
        """
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(
                f"model {quote(name)} is not served (models: {', '.join(sorted(self._models))})"
            )
        ready = model.ready
        if label:
            labelled = model.meta.labels.get(label)
            if labelled is None:
                raise ModelVersionNotFound(f"model {name!r} has no version labelled {quote(label)}")
            version = labelled
        if version is not None:
            for ready_version, served in ready:
                if ready_version == version:
                    return served
            entry = model.versions.get(version)
            if entry is not None and entry.loading and entry.served is None:
                raise ModelNotReady(f"model {name!r} version {version} is still loading")
            raise ModelVersionNotFound(f"model {name!r} has no loaded version {version}")
        if not ready:
            raise ModelNotReady(f"model {name!r} has no version loaded yet")
        pinned = model.meta.version
        if pinned is not None:
            for ready_version, served in ready:
                if ready_version == pinned:
                    return served
        return ready[0][1]

    def wait_refusal(self, arrival_s: float, ahead: int = 0) -> str | None:
        """Why a request that arrived at ``arrival_s`` would be refused by every ready version's queue, or None.

        For the handler pool, before a request's message is received: only a
        request that no model would admit is refused there, whatever model it
        names; the queue it reaches decides for the rest (``ServedModel.admit``).
        ``ahead``: requests on their way to the queues ahead of it (each queue
        counts them all).
        """
        reason = None
        for model in self._models.values():
            for _, served in model.ready:
                reason = served.wait_refusal(arrival_s, ahead)
                if reason is None:
                    return None
        return reason

    def model_names(self) -> list[str]:
        """Configured model names, in configuration order."""
        return list(self._models)

    def version_status(self, name: str) -> list[VersionStatus]:
        """Every known version of ``name``, newest first."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"model {quote(name)} is not served")
        with self._lock:
            return [
                VersionStatus(e.version, e.state, e.error_code, e.error_message)
                for e in sorted(model.versions.values(), key=lambda e: e.version, reverse=True)
            ]

    def is_ready(self, name: str | None = None) -> bool:
        """Whether ``name`` (None: every model) has a loaded, warmed-up version."""
        if name is None:
            return bool(self._models) and all(m.ready for m in self._models.values())
        model = self._models.get(name)
        return model is not None and bool(model.ready)

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(model_name)`` after each change of that model's versions."""
        self._listeners.append(callback)

    def current_version_dir_name(self, name: str) -> str:
        """Directory name of the version ``get(name)`` routes to, or "" (for modelsync)."""
        try:
            served = self.get(name)
        except NaviError:
            return ""
        return served.version_dir.name if served.version_dir is not None else str(served.version)

    # ----------------------------------------------------------------- polling

    def has_pending_versions(self) -> bool:
        """Whether the last rescan held back a version whose files were still changing."""
        return any(model.scanner.pending for model in self._models.values())

    def rescan(self, metas: dict[str, ModelMeta] | None) -> None:
        """Apply META.json overrides, rescan every model directory, load and evict."""
        for model in self._models.values():
            meta = (metas or {}).get(model.name, ModelMeta())
            try:
                effective = meta.apply(model.base_settings)
            except ConfigError as exc:
                log.error("META.json overrides of %s ignored: %s", model.name, exc)
                meta, effective = ModelMeta(version=meta.version, labels=meta.labels), model.base_settings
            found = model.scanner.scan()
            with self._lock:
                model.meta = meta
                model.settings = effective
                self._merge_scan(model, found)
                self._reconcile(model)

    def _merge_scan(self, model: _Model, found: list[VersionDir]) -> None:
        """Bring ``model.versions`` in line with the directories on disk (lock held)."""
        seen = {vdir.version for vdir in found}
        for vdir in found:
            entry = model.versions.get(vdir.version)
            if entry is None:
                model.versions[vdir.version] = _Version(vdir)
                continue
            entry.on_disk = True
            entry.path = vdir.path
            if entry.failed_signature is not None and not entry.loading:
                if files_signature(entry.path) != entry.failed_signature:
                    log.info("%s version %d changed on disk; will retry loading it",
                             model.name, entry.version)
                    entry.failed_signature = None
                    entry.state, entry.error_code, entry.error_message = START, None, ""
        for version, entry in list(model.versions.items()):
            if version not in seen:
                entry.on_disk = False
                if entry.served is None and not entry.loading and entry.state != UNLOADING:
                    del model.versions[version]

    def _chosen(self, model: _Model) -> list[_Version]:
        """Versions that should be loaded, newest first (lock held)."""
        candidates = sorted(
            (e for e in model.versions.values() if e.on_disk and e.failed_signature is None),
            key=lambda e: e.version, reverse=True,
        )
        by_version = {e.version: e for e in model.versions.values() if e.on_disk}
        pinned = model.meta.version
        if pinned is not None and pinned in by_version:
            chosen = [by_version[pinned]] if by_version[pinned].failed_signature is None else []
        else:
            if pinned is not None and model.pin_reported != pinned:
                model.pin_reported = pinned
                log.warning("META.json pins %s to version %d, which is not in %s; serving "
                            "the newest instead", model.name, pinned, model.base_settings.model_dir)
            chosen = candidates[: self.settings.versions_per_model]
        for labelled in model.meta.labels.values():
            entry = by_version.get(labelled)
            if entry is not None and entry.failed_signature is None and entry not in chosen:
                chosen.append(entry)
        return chosen

    def _reconcile(self, model: _Model) -> None:
        """Start the loads and evictions that bring the model to its chosen set (lock held)."""
        if self._stopping.is_set():
            return
        chosen = self._chosen(model)
        for entry in chosen:
            if entry.loading:
                continue
            if entry.served is None:
                self._schedule_load(model, entry)
            elif entry.loaded_settings != model.settings and entry.failed_settings != model.settings:
                log.info("%s version %d: settings changed in META.json; reloading",
                         model.name, entry.version)
                self._schedule_load(model, entry)
        if any(e.loading for e in model.versions.values()):
            return  # evict only once every chosen version has had its load attempt
        if chosen and not any(e.served is not None for e in chosen):
            return  # nothing chosen could load: keep what serves now
        for entry in list(model.versions.values()):
            if entry.served is not None and entry not in chosen:
                self._evict(model, entry)

    def _schedule_load(self, model: _Model, entry: _Version) -> None:
        entry.loading = True
        if entry.served is None:
            entry.state, entry.error_code, entry.error_message = LOADING, None, ""
        settings = model.settings
        future = self._loads.submit(self._load, model, entry, settings)
        self._pending.add(future)
        future.add_done_callback(self._load_done)

    def _load_done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    # ----------------------------------------------------------------- load / evict

    def _load(self, model: _Model, entry: _Version, settings: ModelSettings) -> None:
        """Load, wrap and warm up one version on the load pool; never raises."""
        started = time.monotonic()
        signature = files_signature(entry.path)
        served = None
        try:
            loaded = model.runtime.load(entry.path, settings)
            try:
                served = ServedModel(model.name, entry.version, settings, loaded,
                                     version_dir=entry.path, metrics=self.metrics)
            except BaseException:
                loaded.close()
                raise
            how = warm_up(served, entry.path, settings.max_warmup_records)
        except Exception as exc:  # noqa: BLE001 - any failure marks the version, serving goes on
            if served is not None:
                served.close()
            self._load_failed(model, entry, settings, signature, exc)
            return
        elapsed_s = time.monotonic() - started
        log.info("%s version %d loaded in %.2f s (%s, %s mode)", model.name, entry.version,
                 elapsed_s, how, served.mode)
        self.metrics.new_model_snapshot.labels(model.name).inc()
        self.metrics.model_load_seconds.labels(model.name).observe(elapsed_s)
        with self._lock:
            entry.loading = False
            if self._stopping.is_set():
                retire = served
            else:
                retire = entry.served  # the copy a settings reload replaces
                entry.served = served
                entry.loaded_settings = settings
                entry.state = AVAILABLE
                self._publish(model)
                self._reconcile(model)
        if retire is not None:
            self._retire(model, retire, None)
        self._notify(model.name)

    def _load_failed(self, model: _Model, entry: _Version, settings: ModelSettings,
                     signature: tuple, exc: Exception) -> None:
        code = exc.code if isinstance(exc, NaviError) else Code.INTERNAL
        message = f"{type(exc).__name__}: {exc}"
        log.error("%s version %d (%s) failed to load: %s", model.name, entry.version,
                  entry.path, message)
        self.metrics.model_load_failures.labels(model.name).inc()
        with self._lock:
            entry.loading = False
            if entry.served is not None:
                # a settings reload failed: the loaded copy keeps serving
                entry.failed_settings = settings
            else:
                entry.state, entry.error_code, entry.error_message = END, code, message
                entry.failed_signature = signature
            self._reconcile(model)
        self._notify(model.name)

    def _publish(self, model: _Model) -> None:
        """Rebuild the routing table from AVAILABLE versions (lock held)."""
        ready = sorted(
            ((e.version, e.served) for e in model.versions.values()
             if e.state == AVAILABLE and e.served is not None),
            key=lambda pair: pair[0], reverse=True,
        )
        model.ready = tuple(ready)
        if ready:
            self.metrics.model_snapshot_version.labels(model.name).set(ready[0][0])

    def _evict(self, model: _Model, entry: _Version) -> None:
        """Take ``entry`` out of routing now; drain and close it after the grace (lock held)."""
        log.info("%s version %d unloading", model.name, entry.version)
        served, entry.served = entry.served, None
        entry.state = UNLOADING
        self._publish(model)
        self._retire(model, served, entry)

    def _retire(self, model: _Model, served: ServedModel, entry: _Version | None) -> None:
        def run():
            _lower_thread_priority()
            # requests that read the routing table just before the swap still get in
            self._stopping.wait(UNLOAD_GRACE_S)
            served.close()
            with self._lock:
                if entry is not None and entry.state == UNLOADING:
                    entry.state = END
                    if not entry.on_disk:
                        model.versions.pop(entry.version, None)
            log.info("%s version %d closed", model.name, served.version)
            self._notify(model.name)

        thread = threading.Thread(target=run, name=f"navi-unload-{model.name}", daemon=True)
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]
        thread.start()

    def _notify(self, name: str) -> None:
        for callback in list(self._listeners):
            try:
                callback(name)
            except Exception:  # noqa: BLE001 - a listener must not break loading
                log.exception("model listener failed for %s", name)


__all__ = ["ModelRegistry", "VersionStatus", "UNLOAD_GRACE_S"]
