"""Seeded sampling of training pairs: (sketch, positive photo, negative photo) index triplets.

Every batch is a pure function of ``(seed, rank, step)``: a run resumed after being killed draws exactly
the batches the uninterrupted run would have drawn, with no sampler state to save.

- category level: the positive is a photo of the sketch's class, the negative a photo of another class
  (the class first, uniformly, then a photo of it, so large classes do not dominate the negatives);
- fine-grained: the positive is the sketch's own paired photo (same instance id); sketches without a
  paired photo are never drawn; the negative is another photo of the same class when there is one
  (the hard case of fine-grained retrieval), else of another class.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class PairSampler:
    def __init__(self, sketch_labels, photo_labels, sketch_instances=None, photo_instances=None,
                 fine_grained: bool = False, seed: int = 0, rank: int = 0):
        self.sketch_labels = np.asarray(sketch_labels)
        self.photo_labels = np.asarray(photo_labels)
        self.fine_grained = fine_grained
        self.seed, self.rank = seed, rank
        self.photos_of: dict = defaultdict(list)
        for index, label in enumerate(self.photo_labels.tolist()):
            self.photos_of[label].append(index)
        self.photos_of = {label: np.asarray(v) for label, v in self.photos_of.items()}
        self.classes = np.asarray(sorted(self.photos_of))
        if fine_grained:
            if sketch_instances is None or photo_instances is None:
                raise ValueError("fine-grained sampling needs sketch and photo instance ids")
            photo_of_instance = {inst: i for i, inst in enumerate(photo_instances)}
            self.pair = np.asarray([photo_of_instance.get(inst, -1) for inst in sketch_instances])
            self.anchors = np.flatnonzero(self.pair >= 0)
        else:
            self.anchors = np.flatnonzero(np.isin(self.sketch_labels, self.classes))
        if len(self.anchors) == 0:
            raise ValueError("no sketch has a positive photo to pair with")
        if len(self.classes) < 2 and not fine_grained:
            raise ValueError("category-level training needs photos of at least two classes")

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        sketches = rng.choice(self.anchors, size=batch_size, replace=len(self.anchors) < batch_size)
        labels = self.sketch_labels[sketches]
        positives = np.empty(batch_size, dtype=np.int64)
        negatives = np.empty(batch_size, dtype=np.int64)
        for i, (sketch, label) in enumerate(zip(sketches, labels)):
            same = self.photos_of[label]
            if self.fine_grained:
                positives[i] = self.pair[sketch]
                others = same[same != positives[i]]
                if len(others):
                    negatives[i] = rng.choice(others)
                    continue
            else:
                positives[i] = rng.choice(same)
            other_classes = self.classes[self.classes != label]
            negatives[i] = rng.choice(self.photos_of[rng.choice(other_classes)])
        return sketches, positives, negatives
