"""The standard zero-shot splits (unseen = test classes) and user-defined split files.

A split is a list of unseen class names. Names are matched to a dataset's class names after
normalisation (case, and ``_``/``-``/space treated alike), because the published lists spell some
classes differently from the data (``fire_hydrant`` vs ``fire hydrant``, ``frying-pan``).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from sbir.errors import SbirError

STANDARD_SPLITS = ("sketchy21", "sketchy25", "tuberlin30", "quickdraw30")


def normalise_class_name(name: str) -> str:
    """Spelling-insensitive key of a class name: lower case, ``_``, ``-`` and spaces removed."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def read_class_list(path: Path) -> list[str]:
    """Class names, one per line; blank lines and ``#`` comments ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SbirError(f"{path}: split file is not UTF-8 text") from None
    names = _class_names(text)
    if not names:
        raise SbirError(f"{path}: split file lists no class names")
    return names


def _class_names(text: str) -> list[str]:
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [n for n in names if n]


def standard_split(name: str) -> list[str]:
    return _class_names(resources.files("sbir.data.splits").joinpath(f"{name}.txt").read_text(encoding="utf-8"))


def resolve_unseen_classes(split: str, class_names: list[str], extra_splits: dict[str, list[str]] | None = None,
                           aliases: dict[str, str] | None = None) -> list[str]:
    """The dataset's own class names that a split marks unseen.

    ``split`` is a standard split name, a name from ``extra_splits`` (a dataset's own splits), or a path
    to a text file of class names. ``aliases`` (a dataset's ``class_aliases``) pair two names of one
    class; each pair works both ways, so a split may use either
    name whichever one the data has. A name the dataset has itself always wins over an alias. Raises
    :class:`SbirError` naming the split and every class it lists that the dataset does not have.
    """
    extra_splits = extra_splits or {}
    if split in extra_splits:
        wanted, origin = extra_splits[split], f"split '{split}'"
    elif split in STANDARD_SPLITS:
        wanted, origin = standard_split(split), f"split '{split}'"
    elif Path(split).is_file():
        wanted, origin = read_class_list(Path(split)), f"{split}"
    else:
        names = ", ".join([*STANDARD_SPLITS, *extra_splits])
        raise SbirError(f"unknown split '{split}': not one of {names}, and no such file")
    by_key = {normalise_class_name(c): c for c in class_names}
    other_name: dict[str, str] = {}
    for alias, name in (aliases or {}).items():
        other_name.setdefault(normalise_class_name(alias), normalise_class_name(name))
        other_name.setdefault(normalise_class_name(name), normalise_class_name(alias))

    def own_name(wanted_name: str) -> str | None:
        key = normalise_class_name(wanted_name)
        return by_key.get(key) or by_key.get(other_name.get(key, ""))

    unknown = [w for w in wanted if own_name(w) is None]
    if unknown:
        raise SbirError(f"{origin}: unknown class(es) {', '.join(repr(u) for u in unknown)} "
                        f"(the dataset has {len(class_names)} classes)")
    unseen = sorted({own_name(w) for w in wanted})
    if len(unseen) == len(class_names):
        raise SbirError(f"{origin}: every class is unseen, nothing is left to train on")
    return unseen
