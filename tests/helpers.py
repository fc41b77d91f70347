"""What more than one test file uses: the repository root and the shared data, tiny backbones and models with
their options, random images, tiny shard folders, a tiny Sketchy raw tree, a toy training problem, and a click
runner. Import as ``from tests.helpers import ...`` (``tests`` is a package; pytest puts the repository root
on ``sys.path``). Fixtures live in ``conftest.py``."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sbir.data.datasets.sketchy import AUGMENTATION
from sbir.data.images import ImageConfig, load_image
from sbir.data.shards.reader import INDEX_NAME, iter_tar_samples
from sbir.data.shards.writer import TarShardWriter, sample_bytes, sample_metadata
from sbir.models.backbones import Backbone, TimmViTBackbone, TokenFeatures
from sbir.retrieval.embeddings import Embeddings, write_embeddings
from sbir.train.callbacks import TrainCallback
from sbir.train.loop import TrainData

#: the repository (tests/helpers.py -> tests -> the repository), wherever the test file using it lies
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SBIR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """Path of a folder of ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (set SBIR_SHARED_DATA to the shared data folder)")
    return path


# ----------------------------------------------------------------------------------------------- the command line
def runner() -> CliRunner:
    """A click runner that keeps stderr apart from stdout."""
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def invoke(cli, *args):
    """``cli ARGS`` (each argument passed through ``str``), exceptions not caught."""
    return runner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *words: str) -> str:
    """Check that a command failed as a user error: exit status 2, one ``error: ...`` line on stderr holding every
    one of ``words``, no traceback; return that line."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------------------- images
def images(n: int, size: int = 112, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random normalised images ``[n, 3, size, size]``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def encoded(modality: str, seed: int, size: int = 40) -> tuple[bytes, str]:
    """A random photo (RGB JPEG) or sketch (grey PNG) of ``size`` x ``size``, and its extension."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    if modality == "photo":
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
        return buffer.getvalue(), "jpg"
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue(), "png"


def image_bytes(mode: str, fmt: str, shade=200, size: int = 16) -> bytes:
    """A plain ``size`` x ``size`` image of one colour, encoded."""
    buffer = io.BytesIO()
    Image.new(mode, (size, size), shade).save(buffer, fmt)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- raw data
def make_sketchy(root: Path, classes: tuple[str, ...] = ("cup", "bat", "door"), photos: int = 1, sketches: int = 1,
                 size: int = 16) -> Path:
    """A few classes of Sketchy in the official layout: per class ``photos`` photos ``n0{c}_{p}.jpg`` (p from 0),
    each with ``sketches`` sketches ``n0{c}_{p}-{k}.png`` (k from 1), plain images of ``size`` pixels."""
    for c, name in enumerate(classes):
        photo_dir = root / "256x256" / "photo" / AUGMENTATION / name
        sketch_dir = root / "256x256" / "sketch" / AUGMENTATION / name
        photo_dir.mkdir(parents=True, exist_ok=True)
        sketch_dir.mkdir(parents=True, exist_ok=True)
        for p in range(photos):
            (photo_dir / f"n0{c}_{p}.jpg").write_bytes(image_bytes("RGB", "JPEG", (40 * c % 256, 10 * p % 256, 90),
                                                                   size))
            for k in range(1, sketches + 1):
                (sketch_dir / f"n0{c}_{p}-{k}.png").write_bytes(image_bytes("L", "PNG", 255 - 20 * k, size))
    return root


#: a small generated synthetic dataset (``generate(..., **SYNTHETIC_SMALL)``): 12 photos and 24 sketches
SYNTHETIC_SMALL = {"classes_count": 4, "photos_per_class": 3, "sketches_per_photo": 2}


# ----------------------------------------------------------------------------------------------- shards
def write_shards(folder: Path, per_shard: dict[str, list[int]], paired: bool = True) -> dict[str, list[str]]:
    """Test-part shards, ``per_shard[modality][i]`` samples in shard i (classes cycle over 3), and their
    index; returns the sample keys per modality in shard order. Sketch j pairs with photo j if ``paired``."""
    keys: dict[str, list[str]] = {}
    shards = {}
    for modality, counts in per_shard.items():
        keys[modality] = []
        number = 0
        for shard, count in enumerate(counts):
            writer = TarShardWriter(folder / "test" / f"{modality}-{shard:06d}.tar")
            for _ in range(count):
                key, class_name = f"{modality}_{number:04d}", f"class{number % 3}"
                instance = f"{class_name}/{number}" if paired else f"{class_name}/{modality}:{number}"
                data, extension = encoded(modality, seed=number + (1000 if modality == "photo" else 0))
                meta = sample_metadata(class_name, modality, f"{key}.{extension}", instance)
                writer.write(sample_bytes(key, data, extension, number % 3, meta))
                keys[modality].append(key)
                number += 1
            shards[writer.path.relative_to(folder).as_posix()] = {"samples": count, "sha256": writer.close()}
    index = {"dataset": "tiny", "split": "tiny", "shards": dict(sorted(shards.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    return keys


def shard_images(folder: Path, modality: str, config: ImageConfig) -> torch.Tensor:
    """The test images of ``modality`` of :func:`write_shards` shards in shard order, normalised by ``config``."""
    extension = "jpg" if modality == "photo" else "png"
    samples = [s for p in sorted((folder / "test").glob(f"{modality}-*.tar")) for s in iter_tar_samples(p)]
    assert samples, f"no {modality} samples in {folder / 'test'}"
    pixels = torch.stack([torch.from_numpy(load_image(s[extension], config.size).copy()) for s in samples])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (config.mean, config.std))
    return (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std


def shards_with_random_embeddings(folder: Path, method: str, sha256: str | None = None
                                  ) -> tuple[Path, Path, Embeddings, Embeddings]:
    """``folder/data/shards`` (7 sketches, 6 photos of 3 classes) and seeded random 5-d embeddings of their samples
    in ``folder/data/embeddings``, recorded as made by ``method`` (and the model ``sha256``)."""
    shards = folder / "data" / "shards"
    keys = write_shards(shards, {"sketch": [7], "photo": [6]})
    rng = np.random.default_rng(0)
    embeddings = {m: Embeddings(rng.normal(size=(len(k), 5)).astype(np.float32), k,
                                [f"class{i % 3}" for i in range(len(k))], [f"i{i}" for i in range(len(k))])
                  for m, k in keys.items()}
    write_embeddings(folder / "data" / "embeddings", embeddings,
                     {"method": method, "part": "test", "model_sha256": sha256})
    return shards, folder / "data" / "embeddings", embeddings["sketch"], embeddings["photo"]


# ----------------------------------------------------------------------------------------------- backbones
class TinyBackbone(Backbone):
    """A seeded 2-layer conv net on 32x32 inputs: fast, and sensitive to every pixel and channel."""

    image_config = ImageConfig(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    embed_dim = token_dim = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.name = "tiny"

    def forward_tokens(self, images: torch.Tensor) -> TokenFeatures:
        feature_map = self.net(images)
        tokens = feature_map.flatten(2).transpose(1, 2)
        return TokenFeatures(tokens.mean(dim=1), tokens, tuple(feature_map.shape[-2:]))


class TinyCNN(Backbone):
    """A CNN-like backbone (seeded): one stride-16 conv (and a batch norm if ``batch_norm``), ``size`` x ``size``
    images to a (size/16)^2 grid of ``dim``-wide tokens, no CLS, pooled by the mean."""

    num_prefix_tokens = 0

    def __init__(self, *, size: int = 112, dim: int = 16, batch_norm: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.image_config = ImageConfig(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.embed_dim = self.token_dim = dim
        conv = nn.Conv2d(3, dim, 16, 16)
        self.conv = nn.Sequential(conv, nn.BatchNorm2d(dim)) if batch_norm else conv

    def forward_tokens(self, images: torch.Tensor) -> TokenFeatures:
        feature_map = self.conv(images)
        tokens = feature_map.flatten(2).transpose(1, 2)
        return TokenFeatures(tokens.mean(dim=1), tokens, tuple(feature_map.shape[-2:]))


#: the width of :func:`tiny_vit`
WIDTH = 32


def tiny_vit(img_size: int = 112, depth: int = 2) -> TimmViTBackbone:
    """The project's timm ViT backbone around a tiny random ViT (ViT-B/16's layout: CLS + 16x16 patches)."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=img_size, patch_size=16, embed_dim=WIDTH, depth=depth, num_heads=4,
                            num_classes=0)
    return TimmViTBackbone(vit, ImageConfig(img_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


# ----------------------------------------------------------------------------------------------- zse options
#: heads of a zse model on :func:`tiny_vit` (width 32)
ZSE_SMALL = {"heads": 4, "ffn_dim": 64, "anchor_dim": 16}
#: heads of a zse model on 16-wide tokens (:class:`TinyCNN`'s, or ``tiny_vit``'s in the explain tests)
ZSE_SMALLER = {"heads": 4, "ffn_dim": 32, "anchor_dim": 8}
#: options of a head-only zse model on EfficientNet-Lite0 small enough for a test
LITE0_ZSE_OPTIONS = {"width": 16, "heads": 2, "ffn_dim": 8, "anchor_dim": 4}
#: the model parameters (params.yaml's ``model`` group) of that model
LITE0_ZSE = {"method": "zse", "backbone": "tf_efficientnet_lite0", "weights": None, "head_only": True,
             "options": LITE0_ZSE_OPTIONS}
#: the same options as ``sbir train`` arguments
LITE0_ZSE_ARGS = [arg for key, value in LITE0_ZSE_OPTIONS.items() for arg in ("--option", f"{key}={value}")]


def full_zse():
    """The whole zse model on :func:`tiny_vit` (112 px: 7x7 patches), every weight moved off its initialisation
    (so that every part matters), in eval mode."""
    from sbir.models.zse import ZSESBIR

    model = ZSESBIR(tiny_vit(), **{**ZSE_SMALL, "dropout": 0.0})
    torch.manual_seed(1)
    for parameter in model.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


# ----------------------------------------------------------------------------------------------- training
class ToyModel(nn.Module):
    """Two linear heads on fixed features, triplet loss: the smallest real training problem."""

    def __init__(self, dim: int = 16, out: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleDict({"sketch": nn.Linear(dim, out), "photo": nn.Linear(dim, out)})

    def embed(self, x, modality):
        return nn.functional.normalize(self.heads[modality](x), dim=-1)

    def forward(self, batch):
        s = self.embed(batch["sketch"], "sketch")
        p = self.embed(batch["positive"], "photo")
        n = self.embed(batch["negative"], "photo")
        loss = nn.functional.relu((s - p).norm(dim=1) - (s - n).norm(dim=1) + 0.5).mean()
        return loss, {"triplet": float(loss.detach())}


def toy_data(seed: int, n_per_class: int = 20, classes: int = 4, dim: int = 16) -> TrainData:
    """Features of ``classes`` classes around fixed centres (photos through a fixed linear map), seeded noise."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    sketch = centres[labels] + rng.normal(scale=1.5, size=(len(labels), dim))
    photo = centres[labels] @ np.random.default_rng(7).normal(size=(dim, dim)) / 3 + rng.normal(
        scale=1.5, size=(len(labels), dim))
    tensors = {"sketch": torch.tensor(sketch, dtype=torch.float32), "photo": torch.tensor(photo, dtype=torch.float32)}
    return TrainData(lambda modality, idx: tensors[modality][torch.as_tensor(idx)],
                     {"sketch": labels, "photo": labels},
                     {"sketch": [f"i{i}" for i in range(len(labels))], "photo": [f"i{i}" for i in range(len(labels))]})


class Recorder(TrainCallback):
    """Every report of the training loop, in order."""

    def __init__(self):
        self.events, self.metrics = [], []

    def on_start(self, step, resumed):
        self.events.append(("start", step, resumed))

    def on_step(self, step, metrics):
        self.events.append(("step", step))
        self.metrics.append(dict(metrics))

    def on_end(self, summary):
        self.events.append(("end", summary["steps"]))

    def steps(self) -> list[int]:
        return [e[1] for e in self.events if e[0] == "step"]

    def val_steps(self) -> list[int]:
        return [step for step, m in zip(self.steps(), self.metrics) if "val/map_all" in m]


def assert_same_tensors(a: dict, b: dict) -> None:
    """Two state dicts (or any name -> tensor mappings) hold the same names, at least one, and equal tensors."""
    assert list(a) == list(b) and a, (list(a)[:5], list(b)[:5])
    for name in a:
        assert torch.equal(a[name], b[name]), name


def imported_names(path: Path, package: str) -> set[str]:
    """Every dotted name a module imports anywhere in its body (function-level imports too, ``if TYPE_CHECKING:``
    blocks not): ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a
    submodule). ``package``: the module's package, for relative imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            module = (".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                      if node.level else node.module)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(Path(path).read_text(encoding="utf-8")))
    return found


# ----------------------------------------------------------------------------------------------- a person's images
def drawing(size=(200, 160), mode="L", seed=0, ink=0) -> Image.Image:
    """A few random strokes on white, like a quick drawing."""
    rng = np.random.default_rng(seed)
    image = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(6):
        points = [(float(rng.uniform(0.1, 0.9) * w), float(rng.uniform(0.1, 0.9) * h)) for _ in range(4)]
        draw.line(points, fill=ink, width=max(1, min(size) // 40))
    return image


def photo(seed: int, size=(120, 90)) -> Image.Image:
    """Coloured blocks on a colour background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        draw.ellipse([x, y, x + rng.uniform(10, 50), y + rng.uniform(10, 50)],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- web servers
@contextlib.contextmanager
def serving(app, start_seconds: float = 30.0):
    """Run the ASGI ``app`` with uvicorn in a thread on 127.0.0.1 and a free port; yield its base URL."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_seconds
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
