"""``sbir-prep``: download, shard, verify and describe the datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sbir.cli import SEED, FiniteFloatRange, ImageSize, user_errors
from sbir.data.splits import STANDARD_SPLITS


def _progress() -> bool:
    return sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Get the ZS-SBIR benchmarks into verified, sharded form.

    \b
    Typical use:
      sbir-prep download --dataset sketchy --source ~/data/Sketchy
      sbir-prep shard --dataset sketchy --split sketchy21
      sbir-prep verify data/shards
    """


@main.command()
@click.option("--dataset", required=True, help="sketchy, tuberlin, quickdraw or synthetic (see 'info').")
@click.option("--source", type=click.Path(path_type=Path),
              help="A local copy: the extracted dataset in its official layout (used in place, not copied), "
                   "or a folder holding the archives.")
@click.option("--mirror", help="Base URL of a mirror serving the archives under their file names.")
@click.option("--out", type=click.Path(path_type=Path), help="Where the raw data goes [data/raw/DATASET].")
@click.option("--seed", type=SEED, metavar="INTEGER", default=0, show_default=True,
              help="Seed of the synthetic dataset.")
@user_errors
def download(dataset: str, source: Path | None, mirror: str | None, out: Path | None, seed: int) -> None:
    """Fetch, verify (md5) and safely extract a dataset's archives.

    Drive files go through gdown, HTTP downloads resume after an interruption, and a file whose md5
    does not match the published one is rejected. Re-running after success does nothing. The
    synthetic dataset is generated instead.
    """
    from sbir.data.acquisition.acquire import acquire
    from sbir.data.datasets import get_dataset

    spec = get_dataset(dataset)
    out = out or Path("data/raw") / spec.name
    acquire(spec, out, source=source, mirror=mirror, synthetic_options={"seed": seed}, progress=_progress())
    click.echo(f"{spec.name}: raw data ready in {out}")


@main.command()
@click.option("--dataset", required=True, help="sketchy, tuberlin, quickdraw or synthetic.")
@click.option("--split", help=f"{', '.join(STANDARD_SPLITS)}, a dataset's own split, or a text file of "
                              "unseen class names (one per line) [the dataset's default].")
@click.option("--raw", type=click.Path(path_type=Path), help="Raw data in the official layout [data/raw/DATASET].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/shards"), show_default=True)
@click.option("--image-size", type=ImageSize(), default=256, show_default=True,
              help="Side of the square images stored, in pixels (0 keeps each image's own size).")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per tar shard.")
@click.option("--val-fraction", type=FiniteFloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Fraction of each seen class's instances held out for validation (0: no val part).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the hold-out and the shuffle.")
@click.option("--max-per-class", type=click.IntRange(min=0),
              help="Keep only the first N images per class and modality (0 or unset: all).")
@click.option("--strokes", type=click.Choice(["auto", "simplified", "raw"]), default="auto", show_default=True,
              help="QuickDraw ndjson stroke format to rasterise.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [all cores].")
@click.option("--max-bad", type=FiniteFloatRange(0, 1), default=0.01, show_default=True,
              help="Fail when more than this fraction of the images cannot be read (1: never).")
@click.option("--reference-list", "reference_lists", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="SAKE-format file list ('<path> <class id>'); keep only the files listed (repeatable). "
                   "Reproduces a published split's exact counts, invalid-sketch filtering included.")
@user_errors
def shard(dataset: str, split: str | None, raw: Path | None, out: Path, image_size: int, shard_size: int,
          val_fraction: float, seed: int, max_per_class: int | None, strokes: str, workers: int | None,
          max_bad: float, reference_lists: tuple[Path, ...]) -> None:
    """Write zero-shot WebDataset shards: OUT/{train,val,test}/{sketch,photo}-NNNNNN.tar + OUT/index.json.

    train and val hold the seen classes (val: a seeded hold-out for model selection), test the unseen
    classes. Unreadable inputs are skipped and listed with their reason in index.json.
    """
    from sbir.data.acquisition.acquire import resolve_raw
    from sbir.data.datasets import get_dataset
    from sbir.data.shards.build import shard_dataset, summary_table

    spec = get_dataset(dataset)
    if dataset == "quickdraw":
        spec.stroke_format = strokes
    raw = resolve_raw(raw or Path("data/raw") / spec.name)
    index = shard_dataset(spec, raw, out, split or spec.default_split, image_size=image_size or None,
                          shard_size=shard_size, seed=seed, val_fraction=val_fraction,
                          max_per_class=max_per_class, workers=workers, max_bad=max_bad,
                          reference_lists=list(reference_lists), progress=_progress())
    click.echo(summary_table(index))
    click.echo(f"{len(index['seen_classes'])} seen, {len(index['unseen_classes'])} unseen classes; "
               f"{len(index['shards'])} shards in {out}")
    if index["skipped"]:
        click.echo(f"warning: {len(index['skipped'])} inputs skipped (reasons in {out}/index.json), e.g. "
                   f"{index['skipped'][0]['source']}: {index['skipped'][0]['reason']}", err=True)


@main.command()
@click.argument("shards", type=click.Path(path_type=Path), default=Path("data/shards"))
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [all cores].")
@user_errors
def verify(shards: Path, workers: int | None) -> None:
    """Check a sharded dataset: shard checksums, counts per part, modality and class, every image decodes."""
    from sbir.data.shards.build import verify_sharded

    problems, table = verify_sharded(shards, workers=workers, progress=_progress())
    click.echo(table)
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        click.echo(f"{shards}: {len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo(f"{shards}: OK")


@main.command()
@user_errors
def info() -> None:
    """List the datasets, their splits and sources."""
    from sbir.data.datasets import dataset_names, get_dataset
    from sbir.data.splits import standard_split

    for name in dataset_names():
        spec = get_dataset(name)
        click.echo(f"{name}: {spec.description}")
        click.echo(f"  layout: {spec.layout_hint}")
        for split in (*spec.splits, *spec.extra_splits):
            unseen = spec.extra_splits.get(split) or standard_split(split)
            default = " (default)" if split == spec.default_split else ""
            shown = ", ".join(unseen[:6]) + (", ..." if len(unseen) > 6 else "")
            click.echo(f"  split {split}{default}: {len(unseen)} unseen classes: {shown}")
        for source in spec.sources:
            where = source.url or f"Google Drive id {source.drive_id}"
            md5 = source.md5 or "no md5 published"
            optional = ", optional" if source.optional else ""
            click.echo(f"  source {source.filename} ({source.description}{optional}): {where}; {md5}")
        if not spec.sources:
            click.echo("  source: generated by the project (sbir-prep download --dataset synthetic)")
