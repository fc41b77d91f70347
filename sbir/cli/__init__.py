"""Command-line tools: ``sbir-prep`` (data) and ``sbir`` (models, embedding, evaluation)."""

from __future__ import annotations

import functools
import sys

import click

from sbir.errors import SbirError


def user_errors(function):
    """Turn :class:`SbirError` into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SbirError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
