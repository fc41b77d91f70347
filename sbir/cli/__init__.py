"""Command-line tools: ``sbir-prep`` (data) and ``sbir`` (models, embedding, evaluation)."""

from __future__ import annotations

import functools
import math
import sys

import click

from sbir.errors import SbirError


def user_errors(function):
    """Turn :class:`SbirError` and file-system errors (:class:`OSError`: read-only, full, no permission)
    into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SbirError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except OSError as error:  # the file system said no (read-only, no space, no permission): the user's to fix
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"error: {where}{error.strerror or error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


# Option types shared by the commands (and by the validation of params.yaml, pipeline/params.py).

IMAGE_SIZE_MIN, IMAGE_SIZE_MAX = 16, 4096
#: seeds of every command (and of params.yaml): numpy and torch take them whole (train's per-step torch seed,
#: ``seed * 1_000_003 + ...``, stays far below torch's 2**64 limit)
SEED = click.IntRange(0, 2**32 - 1)


class ImageSize(click.IntRange):
    """``--image-size``: 0 (keep each image's own size) or a side of 16 to 4096 pixels. Below 16 pixels a
    sketch is a smudge (the backbones look at 224 or more); above 4096 a typo is likelier than a wish (one
    4096 x 4096 RGB image is 48 MiB decoded)."""

    def __init__(self) -> None:
        super().__init__(0, IMAGE_SIZE_MAX)

    def convert(self, value, param, ctx) -> int:  # type: ignore[override]
        size = super().convert(value, param, ctx)
        if 0 < size < IMAGE_SIZE_MIN:
            self.fail(f"{size} is not in the range {self._describe_range()}.", param, ctx)
        return size

    def _describe_range(self) -> str:
        return f"0 or {IMAGE_SIZE_MIN}<=x<={IMAGE_SIZE_MAX}"


class FiniteFloatRange(click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan`` and ``inf``: nan compares false with every bound,
    so a plain FloatRange lets it through (and ``--lr nan`` would train to nothing)."""

    def convert(self, value, param, ctx) -> float:  # type: ignore[override]
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not in the range {self._describe_range()}.", param, ctx)
        return number


class ShardsLocation(click.ParamType):
    """``--shards``: a local folder, a ``file://`` or ``http(s)://`` URL of one, or a ``pipe:`` command with
    ``{}`` for the relative path (kept as text: a URL is not a path)."""

    name = "FOLDER|URL"

    def convert(self, value, param, ctx) -> str:
        from sbir.data.shards.location import ShardLocation

        try:
            ShardLocation(str(value))
        except SbirError as error:
            self.fail(str(error), param, ctx)
        return str(value)


SHARDS = ShardsLocation()
