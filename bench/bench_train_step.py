"""Training-step cost of the full models on random-init weights: step time, images/s and peak memory per
batch size, for ZSE-SBIR on ViT-B/16 and CLIP visual prompts on ViT-B/32 (the figures issue 4 asks for
when a GPU is lent; it runs on the CPU too, slowly, with small batches).

A step is what ``sbir.train.loop.train`` does per step: forward of a batch of (sketch, positive photo, negative
photo) triplets to the method's loss (bf16 autocast on CUDA), backward, optimiser step (the method's own
optimiser when it has one, else AdamW over the trainable parameters). Images per step = 3 x batch size.
Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (CUDA only); a batch size that
runs out of memory is reported and the larger ones are skipped.

    python bench/bench_train_step.py [--models zse,clip_prompt] [--batch-sizes 8,16,32,64] [--steps 10]
                                     [--warmup 3] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch

from sbir.models import create_model
from sbir.utils.device import resolve_device

BACKBONES = {"zse": "vit_base_patch16_224", "clip_prompt": "ViT-B-32"}
CLASSES = [f"class {i}" for i in range(100)]


def build(method: str):
    options = {"class_names": CLASSES, "seen_classes": CLASSES[:80]} if method == "clip_prompt" else {}
    return create_model(method, BACKBONES[method], random_init=True, seed=0, **options)


def batch_of(size: int, image_size: int, device: torch.device, seen: int) -> dict:
    generator = torch.Generator().manual_seed(size)
    images = torch.randn(3, size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, seen, (2, size), generator=generator)
    return {"sketch": images[0].to(device), "positive": images[1].to(device), "negative": images[2].to(device),
            "sketch_label": labels[0].to(device), "negative_label": labels[1].to(device)}


def time_steps(model, batch: dict, device: torch.device, steps: int, warmup: int) -> tuple[float, float | None]:
    """Seconds per step and peak CUDA memory (GiB) over ``steps`` timed steps after ``warmup``."""
    optimizer = (model.make_optimizer() if hasattr(model, "make_optimizer")
                 else torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def step():
        with autocast:
            loss, _ = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="zse,clip_prompt")
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.steps} timed steps after {args.warmup} warm-up steps; random-init weights")
    print(f"{'model':<27} {'batch':>5} {'ms/step':>9} {'triplets/s':>11} {'images/s':>9} {'peak GiB':>9}")
    for method in args.models.split(","):
        model = build(method).to(device).train()
        image_size = model.image_config.size
        for size in (int(s) for s in args.batch_sizes.split(",")):
            label = f"{method} ({BACKBONES[method]})"
            try:
                seconds, peak = time_steps(model, batch_of(size, image_size, device, 80), device, args.steps,
                                           args.warmup)
            except torch.cuda.OutOfMemoryError:
                print(f"{label:<27} {size:>5} out of memory; larger batches skipped")
                torch.cuda.empty_cache()
                break
            memory = f"{peak:9.2f}" if peak is not None else f"{'n/a':>9}"
            print(f"{label:<27} {size:>5} {seconds * 1000:9.1f} {size / seconds:11.1f} {3 * size / seconds:9.1f} "
                  f"{memory}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
