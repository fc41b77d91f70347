"""``sbir``: models, embedding, evaluation and explanation."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Train, embed, evaluate and explain zero-shot sketch-based image retrieval models."""
