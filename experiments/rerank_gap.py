"""Diagnostic for the rerank-vs-relation gap of ``zse`` (docs/results.md).

Trains a head-only ``zse`` model (EfficientNet-Lite0 tokens, width 256) on a feature cache and, every
``--every`` steps, prints val (SEEN classes) and test (UNSEEN classes) mAP@all of the three retrieval
modes: ``token``, ``rerank`` (relation on the token top-k, 20x fewer pairs than exhaustive on each part
by default) and exhaustive ``relation``.

It evaluates the unseen test classes at every checkpoint, so it is a diagnostic only: nothing here
selects a model or a setting (``--no-test`` prints the val figures alone). It shows how the
rerank-relation gap follows the token-relation gap, and what the loss options of the model
(``--option relation_pairs=batch --option distill_weight=1``, and ``--option mutual_weight=1`` for the
reverse term; see ``sbir.models.zse``) do to it.

Usage (the folders of a ``dvc repro`` on sketchy-mini / sketchy21, see experiments/quality.sh):
    python experiments/rerank_gap.py data/shards data/features --steps 300
    python experiments/rerank_gap.py data/shards data/features --steps 600 --every 100 \\
        --option relation_pairs=batch --option distill_weight=1
One evaluation takes ~2 min on 2 cores (the exhaustive relation pass on the test part dominates); a step
takes ~0.2 s with the reference loss and ~4 s with every in-batch pair scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from sbir.data.shards.reader import read_index
from sbir.models.folder import build_model
from sbir.retrieval.metrics import evaluate_scores
from sbir.train.inputs import cached_train_data
from sbir.train.sampling import PairSampler


@torch.no_grad()
def map_all(model, data, modes: tuple[str, ...], top_k: int) -> dict[str, float]:
    model.eval()
    features = {m: model.pair_features(data.fetch(m, np.arange(len(data.labels[m]))), m) for m in ("sketch", "photo")}
    results = {}
    for mode in modes:
        scores_fn = model.retrieval_scores(features["sketch"], features["photo"], mode, top_k=top_k)
        results[mode] = round(evaluate_scores(scores_fn, data.labels["sketch"], data.labels["photo"],
                                              n_threads=1)["map_all"], 4)
    model.train()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("features", type=Path)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a zse option (repeatable), e.g. relation_pairs=batch, distill_weight=1")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=13, help="test rerank shortlist (13 of 260 photos: 20x fewer)")
    parser.add_argument("--val-top-k", type=int, default=5, help="val rerank shortlist (5 of 104 photos: 20.8x fewer)")
    parser.add_argument("--no-test", action="store_true", help="val figures only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as sbir.train does on the CPU: bit-identical reruns
    options = {"width": 256}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    index = read_index(args.shards)
    model = build_model({"method": "zse", "backbone": "tf_efficientnet_lite0", "weights": "package",
                         "head_only": True, "options": options}, index, seed=0)
    data = {part: cached_train_data(args.features, part, index["classes"], "tokens")
            for part in ("train", "val", "test")}
    train = data["train"]
    labels = {m: np.asarray(train.labels[m]) for m in ("sketch", "photo")}
    sampler = PairSampler(labels["sketch"], labels["photo"], seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    modes = ("token", "rerank", "relation")
    model.train()
    for step in range(1, args.steps + 1):
        torch.manual_seed(step)
        sketches, positives, negatives = sampler.batch(step - 1, args.batch_size)
        batch = {"sketch": train.fetch("sketch", sketches), "positive": train.fetch("photo", positives),
                 "negative": train.fetch("photo", negatives),
                 "sketch_label": torch.as_tensor(labels["sketch"][sketches]),
                 "negative_label": torch.as_tensor(labels["photo"][negatives])}
        loss, parts = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            line = {"step": step, "loss": round(float(loss.detach()), 4), **{k: round(v, 4) for k, v in parts.items()},
                    "val": map_all(model, data["val"], modes, args.val_top_k)}
            if not args.no_test:
                test = map_all(model, data["test"], modes, args.top_k)
                line.update(test=test, rerank_minus_relation=round(test["rerank"] - test["relation"], 4))
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
