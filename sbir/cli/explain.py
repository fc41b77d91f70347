"""``sbir explain``: why a trained model matches a sketch with a photo (:mod:`sbir.explain`)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from sbir.cli import user_errors


def _cell(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", value)
    if not match:
        raise click.BadParameter(f"'{value}' is not ROW,COL (e.g. 3,4)", param_hint="'--token'")
    return int(match[1]), int(match[2])


def _stem(path: Path) -> str:
    from sbir.data.shards.writer import sample_key

    return sample_key(path.stem) or "image"


@click.command()
@click.option("--sketch", type=click.Path(path_type=Path), required=True, help="The sketch (PNG, JPEG, ...).")
@click.option("--photo", type=click.Path(path_type=Path), required=True, help="The photo (JPEG, PNG, ...).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=Path("data/model"), show_default=True,
              help="A trained model folder (model.json + model.safetensors, the train stage's output).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("explanations"), show_default=True,
              help="Folder for the picture, the synthesised image and the JSON record.")
@click.option("--top", type=click.IntRange(1, 200), default=10, show_default=True,
              help="Strongest patch matches drawn as lines.")
@click.option("--token", default=None, metavar="ROW,COL",
              help="Sketch patch whose weights are mapped over the photo [the one of the strongest match].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N.")
@user_errors
def explain(sketch: Path, photo: Path, model_dir: Path, out: Path, top: int, token: str | None, device: str) -> None:
    """Token correspondences and sketch-to-photo synthesis of one sketch and one photo.

    Writes OUT/<sketch>__<photo>.png (matches, synthesis, heat maps), OUT/<sketch>__<photo>-synthesis.png
    (every sketch patch replaced by its most similar photo patch) and OUT/<sketch>__<photo>.json. For 'zse' the
    correspondences are its cross-attention weights; other methods have none, and the cosine of the backbone's
    patch tokens is drawn instead (so labelled).
    """
    from sbir.data.images import load_user_image
    from sbir.explain.correspondence import MATCH_COLUMNS, explain_pair, json_text, match_records
    from sbir.explain.figures import pair_figure, save_image
    from sbir.explain.retrievals import is_pair_explanations
    from sbir.models.folder import load_model
    from sbir.utils.atomic import atomic_write_text, check_output
    from sbir.utils.figures import save_figure

    focus = _cell(token)
    check_output(out, is_pair_explanations, [sketch, photo, model_dir])
    model = load_model(model_dir, device=device)
    size = model.image_config.size
    sketch_image = load_user_image(sketch, "sketch", size)
    photo_image = load_user_image(photo, "photo", size)
    explanation = explain_pair(model, sketch_image, photo_image, lines=top, focus=focus)
    found = explanation.correspondence
    method, backbone = model.method, model.backbone.name
    heading = f"{method} · {backbone} · {sketch.name} vs {photo.name}"
    if found.relation is not None:
        heading += f" · relation score {found.relation:.3f}"
    stem = f"{_stem(sketch)}__{_stem(photo)}"
    out.mkdir(parents=True, exist_ok=True)
    picture, synthesis, record = out / f"{stem}.png", out / f"{stem}-synthesis.png", out / f"{stem}.json"
    save_figure(pair_figure([explanation], title=heading), picture)
    save_image(explanation.synthesis, synthesis)
    atomic_write_text(record, json_text({
        "sketch": str(sketch), "photo": str(photo), "model": str(model_dir), "method": method,
        "backbone": backbone, "correspondence": found.source, "correspondence_detail": found.detail,
        "synthesis": "argmax cosine of patch tokens", "grid": list(found.grid), "image_size": size,
        "relation": found.relation, "focus": list(divmod(explanation.focus, found.grid[1])),
        "match_columns": MATCH_COLUMNS, "matches": match_records(explanation), "files": [picture.name, synthesis.name],
    }))
    click.echo(f"{found.source} ({method}, {found.grid[0]}x{found.grid[1]} patches) -> {picture}, "
               f"{synthesis}, {record}")
