"""The poll loop: modelsync hook, META.json, rescan, every model_check_interval_s.

Each poll, as the original: run ``--modelsync-cli`` once with
``--model-spec NAME --cur-version V`` for every model (V = the directory name
of the version now served, "" before the first load); its failure is logged
and counted, serving goes on. Then re-read ``META.json`` from
``--meta-json-dir`` (default: the parent of the first model directory); a
malformed file is logged and the last good one stays in force. Then rescan
every model directory (the registry starts loads and evictions).
"""
from __future__ import annotations

import logging
import shlex
import subprocess
import threading
from pathlib import Path

from navi.errors import ConfigError
from navi.repository.meta import META_FILENAME, ModelMeta, read_meta
from navi.settings import ServerSettings

log = logging.getLogger(__name__)

#: a hung modelsync command must not stop polling for ever
MIN_MODELSYNC_TIMEOUT_S = 60.0


def meta_json_path(settings: ServerSettings) -> Path | None:
    """Where META.json is read from, or None when no directory applies."""
    if settings.meta_json_dir is not None:
        return Path(settings.meta_json_dir) / META_FILENAME
    if settings.models:
        return Path(settings.models[0].model_dir).parent / META_FILENAME
    return None


class ModelWatcher:
    """Runs one poll now (``poll_once``) and then one per interval on its own thread."""

    def __init__(self, registry, settings: ServerSettings, metrics):
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._meta_path = meta_json_path(settings)
        self._metas: dict[str, ModelMeta] = {}
        self._meta_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="navi-model-watcher", daemon=True)

    def start(self) -> None:
        """Poll every ``model_check_interval_s`` on a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (a modelsync command running now is left to finish)."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.model_check_interval_s):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one poll
                log.exception("model poll failed")

    def poll_once(self) -> None:
        """Run the modelsync hook, re-read META.json, rescan every model."""
        if self._settings.modelsync_cli:
            self.run_modelsync()
        self._metas = self.read_meta()
        self._registry.rescan(self._metas)

    def run_modelsync(self) -> bool:
        """Run ``--modelsync-cli`` once; True when it exited 0."""
        command = shlex.split(self._settings.modelsync_cli)
        for name in self._registry.model_names():
            command += ["--model-spec", name,
                        "--cur-version", self._registry.current_version_dir_name(name)]
        timeout_s = max(MIN_MODELSYNC_TIMEOUT_S, self._settings.model_check_interval_s)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("modelsync command %r failed: %s", command[0], exc)
            self._metrics.modelsync_failures.inc()
            return False
        if done.returncode != 0:
            log.error("modelsync command %r exited %d: %s", command[0], done.returncode,
                      done.stderr.strip()[-2000:])
            self._metrics.modelsync_failures.inc()
            return False
        log.debug("modelsync ok: %s", done.stdout.strip()[-2000:])
        return True

    def read_meta(self) -> dict[str, ModelMeta]:
        """META.json as it is now, or the last good one if it is malformed."""
        if self._meta_path is None:
            return {}
        try:
            metas = read_meta(self._meta_path)
        except ConfigError as exc:
            message = str(exc)
            if message != self._meta_error:  # one log line per distinct problem
                self._meta_error = message
                log.error("%s is malformed; keeping the last good one: %s",
                          self._meta_path, message)
            return self._metas
        self._meta_error = ""
        return metas if metas is not None else {}
