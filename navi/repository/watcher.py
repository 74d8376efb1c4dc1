"""The poll loop: modelsync hook, META.json, rescan, every model_check_interval_s.

Each poll, as the original: run ``--modelsync-cli`` once with
``--model-spec NAME --cur-version V`` for every model (V = the directory name
of the version now served, "" before the first load); its failure is logged
and counted, serving goes on. A run still going after
``--modelsync-timeout-secs`` is killed with every process it started. Then re-read ``META.json`` from
``--meta-json-dir`` (default: the parent of the first model directory); a
malformed file is logged and the last good one stays in force. Then rescan
every model directory (the registry starts loads and evictions).
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from pathlib import Path

from navi.errors import ConfigError
from navi.repository.meta import META_FILENAME, ModelMeta, read_meta
from navi.settings import ServerSettings

log = logging.getLogger(__name__)

#: after killing a hung modelsync command, how long to wait for its pipes to close
KILLED_DRAIN_S = 5.0


def run_killable(command: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    """Run ``command``; (exit code, stdout, stderr), exit code None when it ran past ``timeout_s``.

    The command runs in its own process group, and on timeout the whole group
    is SIGKILLed: a shell script's children (``gsutil``, ``aws s3 sync``) would
    otherwise outlive it, keep its output pipes open and hang the poll thread
    on reading them, which ``subprocess.run(timeout=...)`` does.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.communicate(timeout=KILLED_DRAIN_S)
        except subprocess.TimeoutExpired:  # a grandchild left its own group with our pipes
            process.kill()
        process.wait()
        return None, "", ""


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
        while not self._stop.wait(self._next_poll_s()):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one poll
                log.exception("model poll failed")

    def _next_poll_s(self) -> float:
        """The poll interval; sooner while a version directory is still being copied in."""
        interval_s = self._settings.model_check_interval_s
        pending = getattr(self._registry, "has_pending_versions", lambda: False)()
        return min(interval_s, self._settings.version_settle_s) if pending else interval_s

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
        timeout_s = self._settings.modelsync_timeout_s
        try:
            returncode, stdout, stderr = run_killable(command, timeout_s)
        except OSError as exc:
            log.error("modelsync command %r failed: %s", command[0], exc)
            self._metrics.modelsync_failures.inc()
            return False
        if returncode is None:
            log.error("modelsync command %r still running after %.0f s (--modelsync-timeout-secs): "
                      "killed it and every process it started; polling with the files as they are",
                      command[0], timeout_s)
            self._metrics.modelsync_failures.inc()
            return False
        if returncode != 0:
            log.error("modelsync command %r exited %d: %s", command[0], returncode, stderr.strip()[-2000:])
            self._metrics.modelsync_failures.inc()
            return False
        log.debug("modelsync ok: %s", stdout.strip()[-2000:])
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
