"""``navi serve``: run the daemon.

Flags keep the original Navi's names so an existing launch script works after
swapping the binary. Only flags the user actually gives are layered over the
``--config`` file and the settings' defaults (see ``navi.config``); the result
is one frozen ``ServerSettings``. A bad value stops start-up with exit code 2
and a message naming the flag or the file key.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
from click.core import ParameterSource

from navi.config import build_settings
from navi.errors import ConfigError
from navi.settings import WORKER_CPU_MODES

log = logging.getLogger("navi.serve")

#: the embedded demo repository served when no model is named
DEMO_MODEL = Path("models") / "home"


def default_model_dirs() -> list[Path]:
    """``models/home`` under the working directory if present, else the embedded demo model."""
    local = Path.cwd() / DEMO_MODEL
    if local.is_dir():
        return [local]
    # the checkout's models/ or, for an installed wheel, a deterministic rebuild
    from navi.demo import demo_repository

    return [demo_repository() / DEMO_MODEL.name]


def _per_model(flag: str, type_, help_: str, *short: str):
    return click.option(flag, *short, multiple=True, type=type_, metavar=type_.name.upper() if hasattr(type_, "name") else "VALUE",
                        help=help_ + " Per model: once for all, or once per --model-dir.")


OPTIONS = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                 help="YAML or TOML file with the same settings, one section per model; flags override it."),
    click.option("--port", "-p", type=click.IntRange(0, 65535), help="gRPC port [default: 8500; 0 = any free port]."),
    click.option("--host", type=str, help="Address to bind [default: 0.0.0.0]."),
    click.option("--prometheus-port", type=click.IntRange(0, 65535),
                 help="HTTP port of /metrics [default: 9000; 0 = any free port]."),
    click.option("--rest-api-port", type=click.IntRange(0, 65535),
                 help="HTTP port of TF Serving's REST API and KServe V2 HTTP [default: 8501; 0 = off]."),
    click.option("--prometheus-host", type=str,
                 help="Address /metrics binds [default: 0.0.0.0; 127.0.0.1 keeps it on this host]."),
    click.option("--model-dir", "-m", multiple=True, type=str,
                 help="A model's directory of versions; repeat for several models. The model's name "
                      "is its last path component. [default: the demo model models/home]"),
    _per_model("--runtime", click.STRING, "Runtime plugin: onnx, tf, torch or an installed one [default: from the newest version's files: model.onnx, saved_model.pb, model.pt; else onnx]."),
    _per_model("--max-batch-size", click.INT, "Requests per server-side batch [default: 16]."),
    _per_model("--batch-time-out-millis", click.FLOAT, "Longest wait to fill a batch [default: 2].", "-b"),
    _per_model("--num-batch-threads", click.INT, "Batches in flight at once per model [default: 2]."),
    _per_model("--batch-eager-when-idle", click.STRING,
               "true/false: run a request at once when its model has no batch running."),
    _per_model("--batch-inline-when-idle", click.STRING,
               "true/false: such a request runs on its own gRPC thread, with no hand-off."),
    _per_model("--input", click.STRING, "Comma-separated input names; empty = from the model [default: examples]."),
    _per_model("--output", click.STRING, "Comma-separated output names; empty = all [default: output_0]."),
    _per_model("--intra-op-parallelism", click.INT, "Runtime intra-op threads."),
    _per_model("--inter-op-parallelism", click.INT, "Runtime inter-op threads."),
    _per_model("--serving-sig", click.STRING, "SavedModel signature to serve (tf)."),
    _per_model("--max-warmup-records", click.INT, "Warm-up records to replay (tf) [default: 500]."),
    _per_model("--onnx-use-converter", click.STRING,
               "BPR converter: home (always), none, auto (when the model's inputs match) [default: auto]."),
    click.option("--batch-drop-millis", type=float,
                 help="A request that waited longer is answered RESOURCE_EXHAUSTED; 0 = never [default: 90]."),
    click.option("--max-batch-rows", type=int, help="Rows per batch; 0 = no limit [default: 0]."),
    click.option("--max-queue-wait-millis", type=float,
                 help="Refuse a request RESOURCE_EXHAUSTED before parsing it when the batches queued "
                      "ahead of it would take longer than this (from the recent batch run time); at "
                      "least one batch per batch thread may always wait; 0 = no bound [default: 100]."),
    click.option("--max-queued-requests", type=int,
                 help="Waiting requests per model version before new ones are refused [default: 10000]."),
    click.option("--model-check-interval-secs", type=float, help="Poll period for new versions [default: 300]."),
    click.option("--meta-json-dir", type=str, help="Where META.json lives [default: parent of the first model dir]."),
    click.option("--modelsync-cli", type=str, help="Command run before each poll."),
    click.option("--version-settle-secs", type=float,
                 help="Load a new version directory once its files (paths, sizes, mtimes) stood still "
                      "this long, never half-copied; 0 = at first sight [default: 2]."),
    click.option("--modelsync-timeout-secs", type=float,
                 help="Kill a --modelsync-cli run (and what it started) still going after this "
                      "long; the poll goes on with the files as they are [default: 60]."),
    click.option("--versions-per-model", type=int, help="Versions kept loaded [default: 1]."),
    click.option("--ssl-dir", "-s", type=str, help="Directory with server.crt, server.key, server.chain (mutual TLS)."),
    click.option("--max-message-bytes", type=int, help="Largest gRPC message in or out [default: 64 MiB]."),
    click.option("--grpc-threads", type=int,
                 help="gRPC handler threads running at once [default: usable cores, 2 to 8]; a thread "
                      "asleep while its request waits in a batch does not count."),
    click.option("--num-worker-threads", "-n", type=int,
                 help="The original's request worker threads: the same as --grpc-threads (which wins "
                      "when both are given)."),
    click.option("--max-blocking-threads", type=int,
                 help="The original's cap on batches running at once, process-wide. navi runs each "
                      "model's batches on its own --num-batch-threads threads instead, so this is "
                      "accepted and has no effect (a warning says so)."),
    click.option("--customops-lib", "-c", type=str,
                 help="Comma-separated shared libraries of custom ops, loaded into every model's "
                      "runtime (ONNX Runtime or TensorFlow) before it loads; :navi:customop_version "
                      "reports the last one. A library that does not load stops start-up."),
    click.option("--grpc-max-threads", type=int,
                 help="Handler threads holding requests, asleep in a batch or running, i.e. requests "
                      "in flight [default: 64; at least --grpc-threads]."),
    click.option("--grpc-max-waiting-requests", type=int,
                 help="Requests waiting for a handler thread before new ones are refused "
                      "RESOURCE_EXHAUSTED, unparsed [default: 256]."),
    click.option("--max-connections", type=int,
                 help="Open connections per process on each of the gRPC and REST ports; past it a new "
                      "one is closed at once (gRPC: UNAVAILABLE, REST: 503) [default: 10000]."),
    click.option("--handshake-timeout-secs", type=float,
                 help="A connection is closed unless its handshake (TLS; gRPC's HTTP/2 settings) ends "
                      "within this long, and on the REST port every request's headers [default: 10]."),
    click.option("--http-idle-timeout-secs", type=float,
                 help="A REST connection idle this long is closed; a request body with no byte for "
                      "this long is answered 408 [default: 75]."),
    click.option("--grpc-stream-window-bytes", type=int,
                 help="Bytes of a request gRPC receives before the call is admitted to a handler "
                      "thread's queue (HTTP/2 stream window), so calls refused unread cost little; 0 = grpc's "
                      "own, grown to megabytes by bandwidth probing [default: 65536]."),
    click.option("--max-request-rows", type=int,
                 help="Rows one request may carry; past it RESOURCE_EXHAUSTED [default: 10000]."),
    click.option("--max-request-decoded-bytes", type=int,
                 help="Bytes one request's tensors may decode to, a value broadcast to a shape at its "
                      "expanded size; past it RESOURCE_EXHAUSTED [default: 134217728 = 128 MiB]."),
    click.option("--shutdown-grace-secs", type=float,
                 help="On SIGTERM, how long in-flight requests may finish [default: 10]."),
    click.option("--workers", type=str,
                 help="Server processes sharing the gRPC port (SO_REUSEPORT), each with its own models, "
                      "under one supervisor that serves the merged /metrics; auto = usable cores. "
                      "A client channel stays on one worker. [default: 1]"),
    click.option("--worker-cpus", type=click.Choice(WORKER_CPU_MODES),
                 help="With --workers > 1: split = each worker's threads stay on its own share of the "
                      "CPUs navi may use (one CPU each when workers = CPUs), none = the OS places them "
                      "[default: none]."),
    click.option("--share-weights", type=str,
                 help="With --workers > 1: map a model's large read-only weights (ONNX initializers) "
                      "from one file for every worker instead of a copy in each [default: true]."),
    # repeatable and comma-separated, as the original's clap Vec<(k, v)> options
    click.option("--onnx-ep-options", multiple=True, type=str,
                 help="k=v,... options of --onnx-gpu-ep's execution provider; without it, of the CPU "
                      "provider (use_arena=true/false)."),
    click.option("--onnx-gpu-ep", type=str, help="GPU execution provider: cuda, tensorrt or onednn."),
    click.option("--onnx-use-parallel-mode", type=str, help="true/false: ORT parallel execution mode."),
    click.option("--onnx-use-memory-pattern", type=str, help="true/false: ORT memory pattern."),
    click.option("--onnx-global-thread-pool-options", multiple=True, type=str,
                 help="intra_op_num_threads=N,inter_op_num_threads=M: one ORT thread pool for all models."),
    click.option("--profiling", type=str, help="ONNX Runtime profiling output prefix."),
    click.option("--onnx-report-discrete-feature-ids", multiple=True, type=str,
                 help="Comma-separated feature ids, repeatable, every BPR model: their values (from "
                      "discreteFeatures and continuousFeatures) go to the :navi:feature_id:discrete histogram."),
    click.option("--onnx-report-continuous-feature-ids", multiple=True, type=str,
                 help="Comma-separated feature ids, repeatable, every BPR model: their values go to "
                      "the :navi:feature_id:continuous histogram."),
]

#: runtimes that load --customops-lib libraries
CUSTOM_OPS_RUNTIMES = ("onnx", "tf")

#: process-wide options the original lets repeat; their values are joined by commas
JOINED_FLAGS = ("--onnx-ep-options", "--onnx-global-thread-pool-options")

#: accepted for compatibility, ignored with a warning
IGNORED_FLAGS = ("max_blocking_threads",)


def _given_flags(ctx: click.Context, params: dict) -> dict:
    """The flags the user gave (command line or environment), by flag name."""
    given = {}
    for param in ctx.command.params:
        if param.name == "config_path" or not isinstance(param, click.Option):
            continue
        value = params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            if param.multiple and not value:
                continue
            if param.multiple and param.opts[0] in JOINED_FLAGS:
                value = ",".join(value)
            given[param.opts[0]] = value
    return given


def settings_from_cli(ctx: click.Context, params: dict):
    """Build and check the ServerSettings; any problem becomes a click usage error (exit 2)."""
    try:
        settings = build_settings(_given_flags(ctx, params), params.get("config_path"), default_model_dirs)
        _check_runtimes(settings)
    except ConfigError as error:
        raise click.UsageError(str(error), ctx=ctx) from None
    return settings


def _check_runtimes(settings) -> None:
    """Resolve each model's runtime and let it validate its options before anything starts."""
    from navi.plugins import resolve_runtime

    for index, model in enumerate(settings.models):
        try:
            runtime = resolve_runtime(model.runtime)
            if model.customops_libs and runtime.name not in CUSTOM_OPS_RUNTIMES:
                raise ConfigError(
                    f"runtime {runtime.name!r} does not load custom-op libraries (only "
                    f"{', '.join(CUSTOM_OPS_RUNTIMES)} do)", key="customops_libs")
            check = getattr(runtime, "check_options", None)
            if check is not None:
                check(model)
        except ConfigError as error:
            raise ConfigError(error.reason, source=f"models[{index}] ({model.name})",
                              key=error.key or "runtime") from None


def run(settings, fleet=None) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the process exit code.

    With ``settings.workers`` > 1 this process becomes the supervisor of that
    many workers (``navi.server.workers``); each worker runs this function
    with its ``fleet`` link.
    """
    if settings.workers > 1 and fleet is None:
        from navi.server.workers import Supervisor

        return Supervisor(settings, run_worker).run()

    from navi.allocator import tune_allocator
    from navi.metrics import Metrics
    from navi.plugins import resolve_runtime
    from navi.repository import ModelRegistry
    from navi.server.app import NaviServer
    from navi.tally import render_text

    tune_allocator()
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics, runtimes=resolve_runtime)
    server = NaviServer(settings, registry, metrics, fleet=fleet)
    stop = threading.Event()
    # a worker logs its own lines, so the supervisor's "navi ready" stays the fleet's
    ready_label = "navi ready" if fleet is None else f"worker {fleet.index} ready"

    def on_signal(signum, frame):
        if stop.is_set():
            # second signal: the operator wants out now
            log.warning("second %s: exiting without draining", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    exit_code = 0
    try:
        if fleet is None:
            server.start()
            registry.start()
        else:
            fleet.attach(render=lambda: render_text(metrics.registry), on_change=server.refresh_health,
                         on_orphaned=stop.set)
            # a worker binds the shared port only once its models are loaded:
            # the kernel sends it connections as soon as it listens, and a
            # restarted worker must not answer them "not loaded" while its
            # siblings could (see benchmarks/RESULTS.md, workers)
            registry.start()
            server.start()
        server.refresh_health()
        # Everything loaded so far lives as long as the process: keep the
        # collector from walking it again on every full collection.
        gc.collect()
        gc.freeze()
        serving = [name for name in registry.model_names() if registry.is_ready(name)]
        waiting = [name for name in registry.model_names() if name not in serving]
        log.info("%s: serving %s", ready_label, ", ".join(serving) or "no model")
        if waiting:
            log.warning("not serving (no version loaded, see the errors above; the next poll retries): %s",
                        ", ".join(waiting))
        while not stop.wait(1.0):
            pass
    except ConfigError as error:  # e.g. the port is taken
        log.error("%s", error)
        exit_code = 2
    except Exception:
        log.exception("navi failed")
        exit_code = 1
    finally:
        # Drain only after a clean run; on a failure, stop at once.
        grace_s = settings.shutdown_grace_s if exit_code == 0 else 0.0
        server.stop(grace_s)
        registry.stop(grace_s)
        if fleet is not None:
            fleet.send_final()
    log.info("navi stopped" if fleet is None else f"worker {fleet.index} stopped")
    return exit_code


def run_worker(settings, index: int, conn, log_level: int) -> None:
    """Entry of one ``--workers`` process (started by ``navi.server.workers.Supervisor``)."""
    from navi.server.workers import WorkerLink, pin_worker

    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s")
    pin_worker(settings, index)  # first: every thread started later inherits the CPUs
    sys.exit(run(settings, WorkerLink(index, conn)))


def _apply(options, function):
    for option in reversed(options):
        function = option(function)
    return function


def _serve(ctx: click.Context, **params) -> None:
    """Serve models over the TF Serving and KServe V2 gRPC APIs."""
    unsupported = [flag for flag in IGNORED_FLAGS if params.get(flag)]
    settings = settings_from_cli(ctx, params)
    for flag in unsupported:
        log.warning("--%s is accepted for compatibility but ignored", flag.replace("_", "-"))
    sys.exit(run(settings))


serve = click.command(name="serve")(_apply(OPTIONS, click.pass_context(_serve)))
