"""`navi bench`: converter, runtime and serving benchmarks.

Subcommands import their machinery only when run, so `navi bench --help`
stays instant and `navi bench serve` never imports an ML framework.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import click

from navi import optional
from navi.bench import CLIENTS
from navi.bench.converter_speed import METHODS as CONVERT_METHODS
from navi.cli.convert import layout_options, load_layout_or_exit

# subcommand -> "module:attribute"
BENCH_COMMANDS = {
    "convert": "navi.cli.bench:convert_bench_command",
    "runtime": "navi.cli.bench:runtime_command",
    "serve": "navi.cli.bench:serve_command",
    "bare-server": "navi.cli.bench:bare_server_command",
}


class _LazyBenchGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(BENCH_COMMANDS)

    def get_command(self, ctx, cmd_name):
        target = BENCH_COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=_LazyBenchGroup)
def bench() -> None:
    """Benchmarks: the converter, runtimes in-process, and a server under load."""
    missing = optional.missing_modules("bench")
    if missing:
        raise click.ClickException(optional.missing_message("bench", "navi bench", missing))


def _int_list(text: str | None) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()] if text else []


def _float_list(text: str | None) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()] if text else []


def _target_pid(text: str) -> tuple[str, int]:
    name, sep, pid = text.partition("=")
    if not sep or not pid.isdigit():
        raise click.BadParameter(f"{text!r}: expected NAME=PID", param_hint="--server-pid")
    return name, int(pid)


@click.command("serve")
@click.option("--target", "targets", multiple=True, required=True,
              help="host:port or name=host:port; repeat to compare targets (runs are interleaved).")
@click.option("--protocol", type=click.Choice(["tfserving", "kserve", "tfrest", "v2http", "v2json"]), default="tfserving", show_default=True,
              help="gRPC: TF Serving Predict (tfserving), KServe V2 ModelInfer (kserve); HTTP: TF Serving REST :predict (tfrest), KServe V2 /infer with binary tensors (v2http) or JSON tensors (v2json).")
@click.option("--concurrency", default=None, help="closed-loop concurrencies, e.g. 1,8,32.")
@click.option("--rate", default=None, help="open-loop request rates per second (Poisson arrivals), e.g. 100,500.")
@click.option("--duration", "duration_s", type=float, default=None,
              help="measured seconds per run (default 10 unless --requests).")
@click.option("--requests", "requests", type=int, default=None, help="measured requests per run instead of a duration.")
@click.option("--warmup-s", type=float, default=2.0, show_default=True, help="warm-up seconds before each run, not measured.")
@click.option("--repeats", type=int, default=1, show_default=True, help="rounds over all loads and targets; medians are reported.")
@click.option("--client-processes", type=int, default=None, help="load generator processes (default min(2, CPUs)).")
@click.option("--channels-per-process", type=int, default=2, show_default=True,
              help="gRPC connections per client process (a --workers server gives each connection one worker).")
@click.option("--timeout-s", type=float, default=30.0, show_default=True, help="per-request deadline.")
@click.option("--client", type=click.Choice(CLIENTS), default="grpcio", show_default=True,
              help="gRPC load generator: grpcio's asyncio client, or navi's raw HTTP/2 one (about a third "
                   "of the CPU per call: more of a shared machine left to the server).")
@click.option("--model", default="home", show_default=True, help="model name in each request.")
@click.option("--signature-name", default="", help="TF Serving signature name (empty: the server's default).")
@click.option("--bpr-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="serialized BPRs: base64 lines or u32-LE length-prefixed records.")
@click.option("--workload", type=click.Choice(["home", "dense"]), default=None,
              help="generated home BPRs, or dense random inputs from the model's metadata "
                   "(default: home unless --bpr-file or --batch-rows).")
@click.option("--input-name", default="examples", show_default=True, help="string tensor carrying the BPRs.")
@click.option("--bprs-per-request", type=int, default=1, show_default=True)
@click.option("--candidates", type=int, default=100, show_default=True, help="candidates per generated BPR.")
@click.option("--spec-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="model version dir with the segdense spec files (home workload; BPR-file row counts).")
@click.option("--batch-rows", type=int, default=None, help="rows per dense random request.")
@click.option("--distinct-requests", type=int, default=None, help="size of the pre-serialized request pool.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--server-pid", "server_pids", multiple=True, help="NAME=PID of a local target, to report server CPU per request.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write results as JSON (with --plot and no --json: next to the plot, suffix .json).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write latency percentiles vs load as a PNG.")
def serve_command(targets, protocol, concurrency, rate, duration_s, requests, warmup_s, repeats, client_processes,
                  channels_per_process, timeout_s, client, model, signature_name, bpr_file, workload, input_name,
                  bprs_per_request, candidates, spec_dir, batch_rows, distinct_requests, seed, server_pids,
                  json_path, plot_path) -> None:
    """Load a running TF Serving / KServe V2 compatible server and report throughput and latency."""
    from navi.bench import report, serve

    console = report.make_console()
    try:
        parsed = [serve.Target.parse(t) for t in targets]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--target")
    pids = dict(_target_pid(p) for p in server_pids)
    unknown = set(pids) - {t.name for t in parsed}
    if unknown:
        raise click.BadParameter(f"no target named {sorted(unknown)}", param_hint="--server-pid")
    parsed = [serve.Target(t.name, t.address, pids.get(t.name)) for t in parsed]
    if duration_s is not None and requests is not None:
        raise click.UsageError("give --duration or --requests, not both")
    if duration_s is None and requests is None:
        duration_s = 10.0
    concurrencies = _int_list(concurrency)
    rates = _float_list(rate)
    if not concurrencies and not rates:
        concurrencies = [1, 8, 32]

    with console.status("building requests"):
        built = _build_workload(protocol, parsed[0].address, model, signature_name, bpr_file, workload,
                                input_name, bprs_per_request, candidates, spec_dir, batch_rows,
                                distinct_requests, seed)
    console.print(f"workload: {built.description}; {len(built.payloads)} distinct requests, "
                  f"{built.mean_request_bytes / 1024:,.1f} KiB each")
    config = serve.ServeBenchConfig(
        targets=parsed, protocol=protocol, concurrencies=concurrencies, rates=rates, duration_s=duration_s,
        requests=requests, warmup_s=warmup_s, repeats=repeats, client_processes=client_processes,
        channels_per_process=channels_per_process, timeout_s=timeout_s, client=client,
    )
    try:
        document = _run_with_progress(console, serve, report, config, built)
    except (RuntimeError, ValueError) as error:
        raise click.ClickException(str(error))
    for table in report.serve_tables(document):
        console.print(table)
    if json_path is None and plot_path is not None:
        json_path = plot_path.with_suffix(".json")
    if json_path:
        report.write_json(document, json_path)
        console.print(f"wrote {json_path}")
    if plot_path:
        report.write_serve_plot(document, plot_path)
        console.print(f"wrote {plot_path}")


def _build_workload(protocol, address, model, signature_name, bpr_file, workload, input_name,
                    bprs_per_request, candidates, spec_dir, batch_rows, distinct_requests, seed):
    """The request pool the options describe."""
    from navi.bench import requests, workloads

    if bpr_file is not None:
        if workload is not None:
            raise click.UsageError("--bpr-file and --workload are exclusive")
        records = workloads.read_bpr_file(bpr_file)
        rows_per_record = None
        if spec_dir is not None:
            from navi import segdense
            from navi.converter import BprConverter

            found = segdense.find_spec_files(spec_dir)
            if found is None:
                raise click.BadParameter(f"{spec_dir}: no segdense spec files", param_hint="--spec-dir")
            rows_per_record = [int(n) for n in BprConverter(segdense.load_layout(*found)).count_rows(records)]
        return workloads.bpr_workload(records, protocol, model, input_name, bprs_per_request, rows_per_record,
                                  signature_name, distinct_requests or 64)
    if workload == "dense" or (workload is None and batch_rows is not None):
        try:
            inputs = requests.fetch_inputs(address, model, protocol, signature_name or "serving_default")
        except Exception as error:  # grpc errors, missing model: say which target and why
            raise click.ClickException(f"cannot read metadata of {model!r} from {address}: {error}")
        return workloads.dense_workload(protocol, model, inputs, batch_rows or 1, seed, distinct_requests or 16,
                                    signature_name)
    return workloads.home_workload(protocol, model, candidates, bprs_per_request, input_name, spec_dir, seed,
                               distinct_requests or 8, signature_name)


def _run_with_progress(console, serve, report, config, workload):
    """Run the benchmark with a live progress line per run on a terminal."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), console=console, transient=True)
    state: dict = {}

    def on_event(kind: str, data: dict) -> None:
        if kind == "start":
            level = f"c={int(data['level'])}" if data["mode"] == "closed" else f"r={data['level']:g}/s"
            if config.requests:
                total = config.requests
            else:
                total = None
            state["task"] = progress.add_task(
                f"run {data['index'] + 1}/{data['total']} {data['target']} {level}", total=total, status="")
            state["progress"] = data["progress"]
        elif kind == "poll":
            done = state["progress"]()
            progress.update(state["task"], completed=done if config.requests else None,
                            status=f"{done:,} requests")
        elif kind == "done":
            progress.remove_task(state["task"])
            progress.console.print(report.run_line(data))

    with progress:
        return serve.run_serve_bench(config, workload, on_event=on_event)


@click.command("bare-server")
@click.option("--port", type=int, default=8600, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--threads", type=int, default=None,
              help="gRPC handler threads [default: navi serve's --grpc-threads default].")
@click.option("--rows", type=int, default=1, show_default=True, help="rows of the constant PredictResponse.")
def bare_server_command(port: int, host: str, threads: int, rows: int) -> None:
    """A bare gRPC server answering every call with constant bytes (the transport ceiling)."""
    from navi.allocator import tune_allocator
    from navi.bench import servers
    from navi.settings import default_grpc_threads

    tune_allocator()  # the same malloc settings as `navi serve`, for a fair ceiling
    threads = threads or default_grpc_threads()
    server, bound = servers.start_bare_server(port, servers.constant_predict_response(rows), threads, host)
    click.echo(f"bare server on {host}:{bound}", err=True)
    servers.serve_until_signalled(server)


@click.command("runtime")
@click.option("--runtimes", default="onnx,tf,torch", show_default=True, help="runtimes to compare.")
@click.option("--batch-rows", default="1,16,128", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="intra-op threads per runtime.")
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--min-time-s", type=float, default=0.5, show_default=True, help="measured seconds per repeat and case.")
@click.option("--home/--no-home", default=True, show_default=True,
              help="also measure converter + ONNX Runtime on a home BPR model (the serving ceiling).")
@click.option("--home-model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a home model version dir (model.onnx + spec files); default: build a small one.")
@click.option("--candidates", type=int, default=100, show_default=True, help="candidates per BPR (home case).")
@click.option("--home-bprs", default="1,4,16", show_default=True, help="BPRs per batch in the home case.")
@click.option("--callers", type=int, default=1, show_default=True,
              help="threads calling the runtime at once (a server keeps several batches in flight).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--daemon", is_flag=True,
              help="also serve the dense model with `navi serve --runtime <rt>` per runtime and load the daemons.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="closed-loop callers per daemon (--daemon).")
@click.option("--duration", "duration_s", type=float, default=10.0, show_default=True,
              help="measured seconds per daemon run (--daemon).")
@click.option("--warmup-s", type=float, default=2.0, show_default=True, help="warm-up per daemon run (--daemon).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def runtime_command(runtimes, batch_rows, threads, repeats, min_time_s, home, home_model_dir, candidates,
                    home_bprs, callers, seed, daemon, concurrency, duration_s, warmup_s, json_path) -> None:
    """Runtime throughput in-process (ONNX / TF / torch on one dense model, converter + runtime), optionally through the daemon."""
    from navi.bench import report, runtime

    console = report.make_console()
    runtime_names = [r.strip() for r in runtimes.split(",") if r.strip()]
    rows_list = _int_list(batch_rows)
    arguments = dict(
        runtimes=runtime_names,
        batch_rows=rows_list,
        threads=threads,
        repeats=repeats,
        min_time_s=min_time_s,
        home=home,
        home_model_dir=home_model_dir,
        candidates=candidates,
        home_bprs_per_batch=_int_list(home_bprs),
        callers=callers,
        seed=seed,
    )
    if daemon:
        # in a child: the frameworks' thread pools stay out of the process driving the daemons
        document = runtime.run_runtime_bench_isolated(**arguments)
    else:
        document = runtime.run_runtime_bench(**arguments, log=lambda text: console.print(text, style="dim"))
    console.print(report.runtime_table(document))
    if daemon:
        document["daemon"] = runtime.run_daemon_bench(
            runtime_names, rows_list, threads=threads, concurrency=concurrency, duration_s=duration_s,
            warmup_s=warmup_s, log=lambda text: console.print(text, style="bold"),
            on_event=lambda kind, data: console.print(report.run_line(data)) if kind == "done" else None)
        for rows in rows_list:
            runs = [r for r in document["daemon"]["runs"] if r["batch_rows"] == rows]
            if runs:
                console.print(f"through the daemon, {rows} rows per request")
                console.print(*report.serve_tables(
                    {"runs": runs, "workload": {"description": f"dense model, {rows} rows per request"}}))
    if json_path:
        report.write_json(document, json_path)
        console.print(f"wrote {json_path}")


@click.command("convert")
@click.option("--input", "input_path", help="A file of BPRs (base64 lines or u32-LE length-prefixed); "
              "default: a generated home-recap-shaped workload.")
@layout_options
@click.option("--bprs", default=20, show_default=True, type=click.IntRange(2), help="Generated BPRs.")
@click.option("--candidates", default=100, show_default=True, type=click.IntRange(1), help="Candidates per generated BPR.")
@click.option("--rounds", default=7, show_default=True, type=click.IntRange(1))
@click.option("--min-round-s", default=0.2, show_default=True, type=click.FloatRange(0),
              help="Each timing repeats its method until it lasts this long (0 = one pass).")
@click.option("--reference-bprs", default=1, show_default=True, type=click.IntRange(0),
              help="BPRs the slow reference decoder converts per round (0 = skip it).")
@click.option("--methods", default=",".join(CONVERT_METHODS), show_default=True, help="Comma-separated methods to run.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write results as JSON.")
def convert_bench_command(input_path, model_dir, spec, all_config, bprs, candidates, rounds, min_round_s,
                          reference_bprs, methods, json_path):
    """Converter throughput: ours vs thriftpy2 decode-alone vs the reference.

    With the two-thread methods it also times a register-only loop on one
    thread and on two in every round: what the machine's cores give code that
    shares nothing, beside the converter's own two-thread ratios.
    """
    import json
    import tempfile

    from navi.bench.converter_speed import render, run_convert_bench
    from navi.bprfile import iter_records, open_input
    from navi.segdense import load_layout
    from navi.workload import home_layout_files, make_bprs

    if input_path:
        layout = load_layout_or_exit(model_dir, spec, all_config)
        with open_input(input_path) as stream:
            payloads = [r.payload for r in iter_records(stream) if r.payload is not None]
        if len(payloads) < 2:
            raise click.UsageError(f"{input_path} holds fewer than 2 readable BPRs")
    else:
        if model_dir or spec or all_config:
            layout = load_layout_or_exit(model_dir, spec, all_config)
        else:
            layout = load_layout(*home_layout_files(Path(tempfile.mkdtemp(prefix="navi-bench-"))))
        click.echo(f"generating {bprs} BPRs x {candidates} candidates ...", err=True)
        payloads = make_bprs(layout, bprs, candidates, seed=0)
    report = run_convert_bench(layout, payloads, rounds=rounds, reference_bprs=reference_bprs,
                               methods=[m.strip() for m in methods.split(",") if m.strip()],
                               log=lambda msg: click.echo(msg, err=True), min_round_s=min_round_s)
    click.echo(render(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
