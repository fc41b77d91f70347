"""Where a sharded dataset is: a local folder, a ``file://`` or ``http(s)://`` URL of that folder (any scheme
WebDataset's ``gopen`` opens: ``gs://``, ``hf://``, ``sftp://`` ...), or a ``pipe:`` command with ``{}`` where
the relative path goes (``pipe:aws s3 cp s3://bucket/shards/{} -``).

Everything is read from the same place: ``index.json`` and then the shards it lists. Remote files are opened
with WebDataset's own I/O (:func:`webdataset.gopen`, ``curl`` for HTTP), never written again here.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from sbir.errors import SbirError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class ShardLocation:
    """A local folder, a URL of a folder, or a ``pipe:`` command template (module docstring)."""

    def __init__(self, where: str | Path):
        self.text = str(where)
        self.folder: Path | None = None
        match = _SCHEME.match(self.text)
        if isinstance(where, Path) or (not match and not self.text.startswith("pipe:")):
            self.folder = Path(where)
        elif self.text.startswith("pipe:"):
            if "{}" not in self.text:
                raise SbirError(f"{self.text}: a pipe: location needs {{}} where the relative path of index.json "
                                "or a shard goes (e.g. 'pipe:curl -s http://host/shards/{}')")
        elif match[1].lower() == "file":
            self.folder = Path(unquote(urlparse(self.text).path))

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    def url(self, relative: str) -> str:
        """What to open for ``relative`` (``index.json``, ``train/photo-000000.tar``): a path or a URL."""
        if self.folder is not None:
            return str(self.folder / relative)
        if self.text.startswith("pipe:"):
            return self.text.replace("{}", relative)
        return self.text.rstrip("/") + "/" + relative

    def read(self, relative: str) -> bytes:
        """The bytes of ``relative``; :class:`SbirError` naming it when it cannot be read."""
        if self.folder is not None:
            return (self.folder / relative).read_bytes()
        from webdataset import gopen

        url = self.url(relative)
        try:
            with gopen(url, "rb") as stream:
                data = stream.read()
        except Exception as error:  # curl's or the pipe's exit status, a refused connection, ...
            raise SbirError(f"{url}: cannot read: {error}") from None
        return data

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"ShardLocation({self.text!r})"


def shard_location(where: str | Path | ShardLocation) -> ShardLocation:
    return where if isinstance(where, ShardLocation) else ShardLocation(where)
