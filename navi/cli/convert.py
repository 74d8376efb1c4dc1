"""``navi convert`` (BPR file -> .npy tensors) and ``navi inspect`` (print one BPR)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from navi.bprfile import FORMATS, iter_records, open_input
from navi.errors import ConfigError, DecodeError

_layout_options = [
    click.option("--model-dir", type=click.Path(path_type=Path, file_okay=False),
                 help="A model version directory holding the segdense spec files."),
    click.option("--spec", type=click.Path(path_type=Path, dir_okay=False),
                 help="segdense_transform_spec_home_recap_2022.json"),
    click.option("--all-config", type=click.Path(path_type=Path, dir_okay=False), help="all_config.json"),
]


def layout_options(fn):
    """Add --model-dir / --spec / --all-config to a command."""
    for option in reversed(_layout_options):
        fn = option(fn)
    return fn


def load_layout_or_exit(model_dir, spec, all_config):
    """Resolve the layout, turning a ConfigError into a click usage error."""
    from navi.segdense import resolve_layout

    try:
        return resolve_layout(model_dir, spec, all_config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def parse_jobs(value: str) -> int:
    """``--jobs``: a positive count, or ``auto`` for the usable cores."""
    from navi.settings import usable_cores

    if value == "auto":
        return usable_cores()
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise click.BadParameter(f"{value!r} is neither a positive number nor 'auto'", param_hint="--jobs")
    return jobs


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for the .npy files (created).")
@layout_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="base64 lines, or u32-LE length-prefixed raw records.")
@click.option("--skip-invalid", is_flag=True, help="Skip records that do not decode, and report how many.")
@click.option("--chunk-bprs", default=256, show_default=True, type=click.IntRange(1),
              help="BPRs converted per block (bounds memory).")
@click.option("--jobs", "-j", default="1", show_default=True, metavar="N|auto",
              help="Worker processes converting blocks (auto = the usable cores). Output is byte-identical "
                   "to --jobs 1. Memory: up to 2N blocks in flight plus one in each worker and one "
                   "being read, about (3N + 1) blocks + ~85 MB per process (a block: --chunk-bprs BPRs "
                   "or 64 MB). Reading and validating stay on one process.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def convert(input_path, out_dir, model_dir, spec, all_config, fmt, skip_invalid, chunk_bprs, jobs, progress):
    """Convert a file of BPRs (INPUT, - for stdin) into one .npy per tensor.

    Writes continuous.npy, binary.npy, discrete.npy, user_embedding.npy,
    user_eng_embedding.npy, author_embedding.npy and batch_ends.npy (int64
    running candidate totals, one per input BPR). Streams: memory stays
    bounded whatever the input size. Files are written as *.npy.partial and
    renamed when complete, batch_ends.npy last; on an error none is left.
    """
    from navi.npy_export import ConvertError, convert_stream

    jobs = parse_jobs(jobs)
    layout = load_layout_or_exit(model_dir, spec, all_config)
    if progress is None:
        progress = sys.stderr.isatty()
    with open_input(input_path) as stream:
        try:
            summary = convert_stream(iter_records(stream, fmt), layout, out_dir, skip_invalid=skip_invalid,
                                     chunk_bprs=chunk_bprs, progress=progress, jobs=jobs)
        except ConvertError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # e.g. the disk filled: the partial files are gone
            raise click.ClickException(f"writing {out_dir}: {exc}") from exc
    message = f"converted {summary.bprs} BPRs, {summary.rows} rows into {out_dir}"
    if skip_invalid:
        message += f"; skipped {summary.skipped} invalid record(s)"
    click.echo(message, err=True)


@click.command("inspect")
@click.argument("input_path", metavar="FILE")
@click.option("--index", default=1, show_default=True, type=click.IntRange(1), help="Which record (1-based).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--max-items", default=20, show_default=True, type=click.IntRange(0),
              help="Entries shown per container (0 = all).")
def inspect_command(input_path, index, fmt, max_items):
    """Print one BPR of FILE readably (decoded with thriftpy2 from thrift/)."""
    from navi.describe_bpr import describe_bpr

    with open_input(input_path) as stream:
        for record in iter_records(stream, fmt):
            if record.number < index:
                continue
            if record.payload is None:
                raise click.ClickException(f"record {record.number}: {record.error}")
            try:
                click.echo(json.dumps(describe_bpr(record.payload, max_items or None), indent=2))
            except DecodeError as exc:
                raise click.ClickException(f"record {record.number}: {exc}") from exc
            return
    raise click.ClickException(f"{input_path} has fewer than {index} records")
