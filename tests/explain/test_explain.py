"""Explanations (sbir.explain): the synthesis is made of the argmax photo patches; ZSE-SBIR's correspondences are
its real cross-attention weights (head mean, rows incl. CLS sum to 1) and the drawn lines are the true top-N; the
patch-cosine fallback and its label for methods without cross-attention; pictures of the expected size that are
not blank; ``sbir explain`` (bad inputs are one-line errors, exit 2); explanations of retrievals of query sets.

Tiny models throughout (a stride-16 conv "CNN" and a 2-block ViT of width 32, 7x7 or 14x14 patch grids), and a
random-init EfficientNet-Lite0 where a registered backbone is needed (the CLI)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from sbir.cli.main import main as sbir_cli
from sbir.data.loader import model_input
from sbir.errors import SbirError
from sbir.explain.correspondence import (
    CROSS_ATTENTION,
    PATCH_COSINE,
    correspondences,
    explain_pair,
    synthesise,
    top_matches,
)
from sbir.explain.figures import OverviewRow, draw_matches, overview_figure, pair_figure
from sbir.explain.retrievals import explain_retrievals
from sbir.models import create_model
from sbir.models.folder import description, write_description
from sbir.models.zse import ZSESBIR
from sbir.utils.figures import figure_array
from tests.helpers import ZSE_SMALLER, TinyCNN, shards_with_random_embeddings, tiny_vit


def rgb(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def sketch_like(size: int, seed: int) -> np.ndarray:
    """White paper with a few dark strokes (not blank, unlike what ``load_user_image`` refuses)."""
    image = np.full((size, size, 3), 255, np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(6):
        row, column = rng.integers(0, size - 20, 2)
        image[row:row + 3, column:column + 20] = 0
        image[row:row + 20, column:column + 3] = 0
    return image


ZSE_MODELS = ("head-only CNN 7x7", "ViT 7x7", "ViT 14x14")


@functools.cache
def zse_model(name: str) -> ZSESBIR:
    """Tiny random ZSE-SBIR models in eval mode: heads on a CNN's tokens, or the full model on a 7x7 / 14x14 ViT."""
    torch.manual_seed(0)
    if name == "head-only CNN 7x7":
        return ZSESBIR(TinyCNN(dim=16), head_only=True, **ZSE_SMALLER).eval()
    return ZSESBIR(tiny_vit(112 if name == "ViT 7x7" else 224), **ZSE_SMALLER).eval()


# ----------------------------------------------------------------------------------------------- synthesis
@pytest.mark.parametrize("size, grid", [(112, (7, 7)), (224, (14, 14))])
def test_synthesis_is_made_of_the_argmax_photo_patches(size, grid):
    sketch, photo = rgb(size, 1), rgb(size, 2)
    cells = grid[0] * grid[1]
    similarity = np.random.default_rng(3).normal(size=(cells, cells)).astype(np.float32)
    out = synthesise(sketch, photo, similarity, grid)
    assert out.shape == photo.shape and out.dtype == np.uint8
    p = size // grid[1]
    photo_patches = [photo[r * p:(r + 1) * p, c * p:(c + 1) * p] for r in range(grid[0]) for c in range(grid[1])]
    for cell in range(cells):
        r, c = divmod(cell, grid[1])
        patch = out[r * p:(r + 1) * p, c * p:(c + 1) * p]
        equal = [j for j, candidate in enumerate(photo_patches) if np.array_equal(patch, candidate)]
        assert equal == [int(similarity[cell].argmax())]  # exactly the argmax photo patch, pixel for pixel


def test_synthesis_refuses_what_does_not_tile():
    with pytest.raises(ValueError, match="does not split"):
        synthesise(rgb(50, 0), rgb(50, 1), np.zeros((49, 49)), (7, 7))
    with pytest.raises(ValueError, match="differ in size"):
        synthesise(rgb(56, 0), rgb(112, 1), np.zeros((49, 49)), (7, 7))


# ----------------------------------------------------------------------------------------------- correspondences
@pytest.mark.parametrize("name", ZSE_MODELS)
def test_zse_correspondences_are_its_cross_attention_weights(name):
    model = zse_model(name)
    size = model.image_config.size
    sketch, photo = sketch_like(size, 0), rgb(size, 1)
    found = correspondences(model, sketch, photo)
    with torch.inference_mode():
        inputs = model_input([sketch], model.image_config), model_input([photo], model.image_config)
        pair = model.pair(*inputs)
        tokens = model.tokens(inputs[0], "sketch"), model.tokens(inputs[1], "photo")
    expected = pair.attention.sketch_attention[0].mean(dim=0).numpy()  # [1 + Ns, 1 + Np], mean over heads
    cells = model.grid[0] * model.grid[1]
    assert found.source == CROSS_ATTENTION and found.grid == model.grid
    assert found.attention.shape == (1 + cells, 1 + cells)
    np.testing.assert_allclose(found.attention, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(found.attention.sum(axis=1), 1.0, atol=1e-5)  # rows incl. CLS
    np.testing.assert_array_equal(found.weights, found.attention[1:, 1:])
    assert found.relation == pytest.approx(float(pair.relation[0]), abs=1e-6)
    cosine = F.normalize(tokens[0].patches[0], dim=-1) @ F.normalize(tokens[1].patches[0], dim=-1).T
    np.testing.assert_allclose(found.similarity, cosine.numpy(), atol=1e-5)
    # the drawn top-N are the true top-N of the patch-to-patch attention
    n = 12
    values, flat = torch.from_numpy(expected[1:, 1:]).flatten().topk(n)
    matches = top_matches(found.weights, n)
    assert [(m.sketch_cell, m.photo_cell) for m in matches] == [divmod(int(i), cells) for i in flat]
    np.testing.assert_allclose([m.weight for m in matches], values.numpy(), rtol=1e-5)


def test_drawn_lines_are_the_strongest_matches():
    model = zse_model("ViT 14x14")
    explanation = explain_pair(model, sketch_like(224, 2), rgb(224, 3), lines=7)
    figure = pair_figure([explanation])
    lines = draw_matches(figure, figure.axes[0], explanation)
    segments, weights = lines.get_segments(), lines.get_array()
    truth = top_matches(explanation.correspondence.weights, 7)[::-1]  # weakest drawn first, strongest on top
    gap, patch = 224 // 12, 224 // 14
    assert len(segments) == 7
    for segment, weight, match in zip(segments, weights, truth):
        (sr, sc), (pr, pc) = divmod(match.sketch_cell, 14), divmod(match.photo_cell, 14)
        np.testing.assert_allclose(segment, [[(sc + 0.5) * patch, (sr + 0.5) * patch],
                                             [224 + gap + (pc + 0.5) * patch, (pr + 0.5) * patch]])
        assert weight == pytest.approx(match.weight)
    assert explanation.focus == truth[-1].sketch_cell


@pytest.mark.parametrize("method, backbone", [("frozen", "cnn"), ("linear", "cnn"), ("frozen", "vit")])
def test_models_without_cross_attention_fall_back_to_patch_cosine(method, backbone):
    model = create_model(method, TinyCNN(dim=16) if backbone == "cnn" else tiny_vit(112)).eval()
    sketch, photo = sketch_like(112, 4), rgb(112, 5)
    found = correspondences(model, sketch, photo)
    with torch.inference_mode():
        tokens = model.backbone.forward_tokens(model_input([sketch, photo], model.image_config)).tokens
    patches = tokens[:, model.backbone.num_prefix_tokens:]  # the ViT's CLS is not a patch
    cosine = (F.normalize(patches[0], dim=-1) @ F.normalize(patches[1], dim=-1).T).numpy()
    assert found.source == PATCH_COSINE and found.attention is None and found.relation is None
    assert found.grid == (7, 7)
    np.testing.assert_allclose(found.weights, cosine, atol=1e-5)
    np.testing.assert_array_equal(found.similarity, found.weights)
    assert "cosine" in found.detail and "no cross-attention" in found.detail
    figure = pair_figure([explain_pair(model, sketch, photo, lines=5)], title="t")
    texts = [figure._suptitle.get_text()] + [ax.get_title() for ax in figure.axes]
    assert any("patch cosine" in text for text in texts) and "no cross-attention" in texts[0]


def test_focus_outside_the_grid_is_refused():
    model = zse_model("head-only CNN 7x7")
    assert explain_pair(model, sketch_like(112, 0), rgb(112, 1), focus=(6, 2)).focus == 6 * 7 + 2
    with pytest.raises(SbirError, match="outside the model's 7x7 patch grid"):
        explain_pair(model, sketch_like(112, 0), rgb(112, 1), focus=(7, 0))


# ----------------------------------------------------------------------------------------------- pictures
def test_pictures_have_their_size_and_are_not_blank():
    model = zse_model("head-only CNN 7x7")
    explanations = [explain_pair(model, sketch_like(112, s), rgb(112, 10 + s), lines=5) for s in range(2)]
    figure = pair_figure(explanations, title="two rows")
    picture = figure_array(figure)
    width, height = figure.get_size_inches() * figure.dpi
    assert picture.shape == (round(height), round(width), 3)
    assert picture.std() > 20
    overview = overview_figure([OverviewRow("class a", explanations)] * 2)
    picture = figure_array(overview)
    assert picture.shape[0] > 300 and picture.shape[1] > 600 and picture.std() > 20


# ----------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def frozen_folder(tmp_path_factory) -> Path:
    """A model folder of the frozen method on a random-init EfficientNet-Lite0 (no weight file needed)."""
    folder = tmp_path_factory.mktemp("frozen")
    write_description(folder, description({"method": "frozen", "backbone": "tf_efficientnet_lite0"}, None,
                                          random_init=True))
    return folder


@pytest.fixture(scope="module")
def user_images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = {"sketch": folder / "my sketch.png", "photo": folder / "photo.jpg", "blank": folder / "blank.png",
             "text": folder / "notes.png"}
    Image.fromarray(sketch_like(180, 0)[..., 0]).save(paths["sketch"])
    Image.fromarray(rgb(150, 1)).resize((300, 200)).save(paths["photo"])
    Image.new("L", (100, 100), 255).save(paths["blank"])
    paths["text"].write_text("not an image")
    return paths


def run_cli(*args: str):
    return CliRunner().invoke(sbir_cli, ["explain", *args])


def test_cli_writes_the_picture_synthesis_and_record(frozen_folder, user_images, tmp_path):
    out = tmp_path / "out"
    result = run_cli("--sketch", str(user_images["sketch"]), "--photo", str(user_images["photo"]),
                     "--model", str(frozen_folder), "--out", str(out), "--top", "6", "--token", "3,4")
    assert result.exit_code == 0, result.output
    stem = "my-sketch__photo"
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}-synthesis.png", f"{stem}.json", f"{stem}.png"]
    record = json.loads((out / f"{stem}.json").read_text())
    assert record["correspondence"] == PATCH_COSINE and record["method"] == "frozen"
    assert record["grid"] == [7, 7] and record["focus"] == [3, 4] and len(record["matches"]) == 6
    with Image.open(out / f"{stem}-synthesis.png") as synthesis:
        assert synthesis.size == (224, 224)
    with Image.open(out / f"{stem}.png") as picture:
        assert picture.width > 1000 and np.asarray(picture.convert("L")).std() > 20


def test_cli_zse_draws_cross_attention(monkeypatch, user_images, tmp_path):
    """The CLI's zse path, with a tiny model in place of the loaded folder."""
    monkeypatch.setattr("sbir.models.folder.load_model", lambda path, device=None: zse_model("head-only CNN 7x7"))
    result = run_cli("--sketch", str(user_images["sketch"]), "--photo", str(user_images["photo"]),
                     "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "my-sketch__photo.json").read_text())
    assert record["correspondence"] == CROSS_ATTENTION and 0 < record["relation"] < 1
    assert "cross-attention" in result.output


@pytest.mark.parametrize("case, message", [
    ("missing sketch", "no such file"), ("not an image", "not an image"), ("blank sketch", "sketch is blank"),
    ("missing model", "no such model folder"), ("model without model.json", "no model.json"),
    ("token outside the grid", "outside the model's 7x7 patch grid"), ("token not ROW,COL", "is not ROW,COL"),
])
def test_cli_bad_inputs_are_one_line_errors(case, message, frozen_folder, user_images, tmp_path):
    sketch, photo, model, extra = user_images["sketch"], user_images["photo"], frozen_folder, []
    if case == "missing sketch":
        sketch = tmp_path / "nope.png"
    elif case == "not an image":
        photo = user_images["text"]
    elif case == "blank sketch":
        sketch = user_images["blank"]
    elif case == "missing model":
        model = tmp_path / "no-model"
    elif case == "model without model.json":
        model = tmp_path / "empty-model"
        model.mkdir()
    elif case == "token outside the grid":
        extra = ["--token", "7,0"]
    else:
        extra = ["--token", "3x4"]
    result = run_cli("--sketch", str(sketch), "--photo", str(photo), "--model", str(model),
                     "--out", str(tmp_path / "out"), *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    if case != "token not ROW,COL":  # click's own usage errors print the usage first
        assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------------------------- query sets
def test_explain_retrievals_with_zse(tmp_path):
    shards, embeddings, sketches, photos = shards_with_random_embeddings(tmp_path, "zse", sha256="abc")
    model = zse_model("head-only CNN 7x7")
    index = explain_retrievals(model, embeddings, shards, tmp_path / "explain", queries=2, seed=1, top=2, lines=4)
    assert index["correspondence"] == CROSS_ATTENTION and index["method"] == "zse"
    assert sorted(p.name for p in (tmp_path / "explain").iterdir()) == sorted(index["files"] + ["index.json"])
    assert json.loads((tmp_path / "explain" / "index.json").read_text()) == index
    scores = sketches.vectors / np.linalg.norm(sketches.vectors, axis=1, keepdims=True)
    scores = scores @ (photos.vectors / np.linalg.norm(photos.vectors, axis=1, keepdims=True)).T
    assert len(index["queries"]) == 2
    for query in index["queries"]:
        row = sketches.keys.index(query["sketch"])
        assert [r["photo"] for r in query["retrieved"]] == [photos.keys[i] for i in np.argsort(-scores[row])[:2]]
        assert all(0 < r["relation"] < 1 and len(r["matches"]) == 4 for r in query["retrieved"])
    with pytest.raises(SbirError, match="embeddings made with method 'zse', but the model has 'frozen'"):
        explain_retrievals(create_model("frozen", TinyCNN()), embeddings, shards, tmp_path / "x")
    with pytest.raises(SbirError, match="made with model_sha256 'abc'"):
        explain_retrievals(model, embeddings, shards, tmp_path / "x", identity={"method": "zse", "model_sha256": "d"})
    assert not (tmp_path / "x").exists()
