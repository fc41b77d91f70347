"""Training: the loop (``loop``), checkpoints, callbacks, training inputs (shard images or the feature cache),
class-balanced pair sampling, and training a model folder from a model spec (``run``)."""
