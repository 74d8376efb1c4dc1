"""``navi demo``: write the deterministic demo models.

``navi demo`` (re)writes the committed demo repository (``models/home`` and
``models/dense``); ``navi demo --heavy [--out DIR]`` writes the benchmark's heavy
home model to ``DIR/home_heavy`` instead (about 28 MB, never committed; DIR
defaults to the navi cache, ``$NAVI_CACHE_DIR`` or ``~/.cache/navi``, + ``/models``).
"""
from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Model repository to write into (one sub-directory per model) "
    "[default: models, or the navi cache dir with --heavy].",
)
@click.option("--heavy", is_flag=True, help="Write only the heavy benchmark model (home_heavy).")
@click.option("--seed", type=int, default=0, show_default=True, help="Weight and spec seed.")
@click.option("--check", is_flag=True,
              help="Rebuild into a temporary dir and fail if any file under --out differs (CI).")
def demo(out_dir: Path | None, heavy: bool, seed: int, check: bool) -> None:
    """Write the deterministic demo models (same bytes on every run)."""
    # imported here so `navi --help` does not load onnx
    from navi import demo as builders

    if out_dir is None:
        # the heavy model (~28 MB) never goes into the source tree by default
        out_dir = builders.default_cache_dir() / "models" if heavy else Path("models")

    if check:
        _check(out_dir, heavy, seed)
        return
    written = (
        {"home_heavy": builders.write_heavy_model(out_dir, seed=seed)}
        if heavy
        else builders.write_demo_models(out_dir, seed=seed)
    )
    for name, version_dir in written.items():
        model_path = version_dir / "model.onnx"
        size_kib = model_path.stat().st_size / 1024
        click.echo(f"{name}: {version_dir} ({size_kib:,.0f} KiB, sha256 "
                   f"{builders.file_digest(model_path)[:16]})")


def _check(out_dir: Path, heavy: bool, seed: int) -> None:
    """Compare the model files under ``out_dir`` with fresh builds, byte for byte."""
    import tempfile

    from navi import demo as builders

    with tempfile.TemporaryDirectory() as tmp:
        fresh = (
            {"home_heavy": builders.write_heavy_model(Path(tmp), seed=seed)}
            if heavy
            else builders.write_demo_models(Path(tmp), seed=seed)
        )
        stale = []
        for name, version_dir in fresh.items():
            existing = Path(out_dir) / name / version_dir.name
            for new_file in sorted(version_dir.iterdir()):
                old_file = existing / new_file.name
                if not old_file.is_file() or old_file.read_bytes() != new_file.read_bytes():
                    stale.append(str(old_file))
        if stale:
            raise click.ClickException(
                "demo models differ from a rebuild (run `navi demo`): " + ", ".join(stale)
            )
    click.echo(f"demo models under {out_dir} match a rebuild")
