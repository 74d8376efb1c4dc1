"""The ``navi`` command group.

Subcommands are imported only when invoked, so ``navi --help`` and
``navi convert`` never pay for importing gRPC servers or ML frameworks.
"""
from __future__ import annotations

import importlib
import logging
import os

# numpy's OpenBLAS starts a thread per core that spins after each BLAS call;
# navi's compute runs in the model runtimes and the decoder, so on a small
# machine those spinning threads only steal CPU from them. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from navi import __version__

# command name -> "module:attribute"
COMMANDS = {
    "serve": "navi.cli.serve:serve",
    "convert": "navi.cli.convert:convert",
    "inspect": "navi.cli.convert:inspect_command",
    "bench": "navi.cli.bench:bench",
    "demo": "navi.cli.demo:demo",
    "health": "navi.cli.health:health",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, cmd_name):
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="navi")
@click.option(
    "--log-level",
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging verbosity.",
)
def main(log_level: str) -> None:
    """navi: serve ML models over the TF Serving and KServe V2 gRPC APIs."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":
    main()
