"""Diagnostic for the rerank-vs-relation gap of ``zse`` (README, "Quality on real data").

Trains a head-only ``zse`` model (EfficientNet-Lite0 tokens, width 256) on a feature cache and, every
``--every`` steps, prints val (SEEN classes) and test (UNSEEN classes) mAP@all of the three retrieval
modes: ``token``, ``rerank`` (relation on the token top ``--top-k``) and exhaustive ``relation``.

It evaluates the unseen test classes at every checkpoint, so it is a diagnostic only: nothing here
selects a model or a setting. It shows how the rerank-relation gap follows the token-relation gap.

``--loss reference`` is the model's own loss (one positive and one negative pair per sketch).
``--loss balanced`` is an experiment, not a method option: the relation MSE is taken over every
sketch x photo pair of the batch (same class → 0.99, other → 0.01), the positive and negative pairs
averaged separately. The triplet term is the reference one.

Usage (the folders of a ``dvc repro`` on sketchy-mini / sketchy21, see experiments/quality.sh):
    python experiments/rerank_gap.py data/shards data/features --steps 300
Takes ~7 min per evaluation on one CPU thread (the exhaustive relation pass dominates).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sbir.losses import zse_loss
from sbir.metrics import evaluate_scores
from sbir.models.zse import Tokens
from sbir.sampling import PairSampler
from sbir.shards import read_index
from sbir.train_data import cached_train_data
from sbir.training import build_model

MODEL = {"method": "zse", "backbone": "tf_efficientnet_lite0", "weights": "package", "head_only": True,
         "options": {"zse": {"width": 256}}}


@torch.no_grad()
def map_all(model, data, modes: tuple[str, ...], top_k: int) -> dict[str, float]:
    model.eval()
    features = {m: model.pair_features(data.fetch(m, np.arange(len(data.labels[m]))), m) for m in ("sketch", "photo")}
    results = {}
    for mode in modes:
        scores_fn = model.retrieval_scores(features["sketch"], features["photo"], mode, top_k=top_k)
        results[mode] = evaluate_scores(scores_fn, data.labels["sketch"], data.labels["photo"], n_threads=1)["map_all"]
    model.train()
    return results


def loss_of(model, batch: dict, kind: str) -> torch.Tensor:
    sketch_tokens = model.tokens(batch["sketch"], "sketch")
    photo_tokens = Tokens.cat([model.tokens(batch["positive"], "photo"), model.tokens(batch["negative"], "photo")])
    n = len(sketch_tokens)
    projected = model._project(sketch_tokens, photo_tokens)
    if kind == "reference":
        sketch, photo, relation = model._pairs_forward(projected, torch.arange(n).repeat(2), torch.arange(2 * n))
        return zse_loss(sketch[:n], photo[:n], photo[n:], relation[:n], relation[n:])[0]
    sketch_index, photo_index = torch.arange(n).repeat_interleave(2 * n), torch.arange(2 * n).repeat(n)
    sketch, photo, relation = model._pairs_forward(projected, sketch_index, photo_index)
    positive = torch.arange(n) * 2 * n + torch.arange(n)  # pair (i, positive i) in the flattened grid
    negative = positive + n
    triplet = zse_loss(sketch[positive], photo[positive], photo[negative], relation[positive], relation[negative])[1]
    photo_labels = torch.cat([batch["sketch_label"], batch["negative_label"]])
    same = batch["sketch_label"][sketch_index] == photo_labels[photo_index]
    target = torch.where(same, 0.99, 0.01)
    balanced = (F.mse_loss(relation[same], target[same]) + F.mse_loss(relation[~same], target[~same])) / 2
    return model.triplet_weight * triplet["triplet"] + model.relation_weight * balanced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("features", type=Path)
    parser.add_argument("--loss", choices=("reference", "balanced"), default="reference")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=13, help="rerank shortlist (13 of 260 photos: 20x fewer pairs)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    index = read_index(args.shards)
    model = build_model(MODEL, index, seed=0)
    data = {part: cached_train_data(args.features, part, index["classes"], "tokens")
            for part in ("train", "val", "test")}
    train = data["train"]
    labels = {m: np.asarray(train.labels[m]) for m in ("sketch", "photo")}
    sampler = PairSampler(labels["sketch"], labels["photo"], seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    model.train()
    for step in range(1, args.steps + 1):
        torch.manual_seed(step)
        sketches, positives, negatives = sampler.batch(step - 1, args.batch_size)
        batch = {"sketch": train.fetch("sketch", sketches), "positive": train.fetch("photo", positives),
                 "negative": train.fetch("photo", negatives),
                 "sketch_label": torch.as_tensor(labels["sketch"][sketches]),
                 "negative_label": torch.as_tensor(labels["photo"][negatives])}
        loss = loss_of(model, batch, args.loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            val = map_all(model, data["val"], ("token", "relation"), args.top_k)
            test = map_all(model, data["test"], ("token", "rerank", "relation"), args.top_k)
            print(f"step {step} loss {float(loss.detach()):.3f} | val token {val['token']:.4f} relation "
                  f"{val['relation']:.4f} | test token {test['token']:.4f} rerank@{args.top_k} {test['rerank']:.4f} "
                  f"relation {test['relation']:.4f} | rerank - relation {test['rerank'] - test['relation']:+.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
