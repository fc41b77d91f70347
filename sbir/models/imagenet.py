"""Which ImageNet-1k classes a dataset's class corresponds to: the targets of SAKE's semantic adjustment.

Two sources, both giving ``{class name: [ImageNet-1k class indices]}``:

- :func:`classes_from_instances`: the synset ids that photo ids start with. Sketchy's photos are ImageNet
  images named after their synset (``n02691156_10151``: synset ``n02691156``, "airplane"), so the classes
  of the training photos name their own ImageNet classes; a synset outside the 1,000 classes of ImageNet-1k
  (Sketchy draws on the full ImageNet) gives none.
- :func:`read_class_map`: a text file for other datasets, one class per line: the class name, a tab, then
  one or more synset ids (``n02690373``) or class indices (``404``) separated by spaces or commas; ``#``
  starts a comment.

The index of a synset is its position in ImageNet-1k's sorted synset list (timm's ``ImageNetInfo``, the
order of the classifiers of ImageNet-trained models).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

from sbir.errors import SbirError

SYNSET = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1,000 synset ids of ImageNet-1k in class-index order."""
    from timm.data import ImageNetInfo

    synsets = tuple(ImageNetInfo().label_names())
    if len(synsets) != IMAGENET_CLASSES:
        raise SbirError(f"timm's ImageNet-1k class list has {len(synsets)} entries, not {IMAGENET_CLASSES}")
    return synsets


@functools.cache
def synset_index() -> dict[str, int]:
    return {synset: index for index, synset in enumerate(imagenet_synsets())}


def classes_from_instances(class_names: Sequence[str], labels: Sequence[int],
                           instances: Sequence[str]) -> dict[str, list[int]]:
    """``{class: sorted ImageNet-1k indices}`` of the synsets that begin the photo ids ``instances`` (``labels``:
    each photo's index into ``class_names``). A prefix such as Sketchy-Extended's ``ext:`` is allowed; classes
    none of whose photos carries an ImageNet-1k synset are left out."""
    index = synset_index()
    found: dict[str, set[int]] = {}
    for label, instance in zip(labels, instances):
        match = SYNSET.search(str(instance))
        if match and match[0] in index:
            found.setdefault(class_names[int(label)], set()).add(index[match[0]])
    return {name: sorted(found[name]) for name in sorted(found)}


def read_class_map(path: Path) -> dict[str, list[int]]:
    """The class map file ``path`` (module docstring); a line that does not parse is an :class:`SbirError`
    naming the file, the line and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SbirError(f"{path}: cannot read the ImageNet class map: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SbirError(f"{path}: the ImageNet class map is not UTF-8 text") from None
    index, mapping = synset_index(), {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        name, tab, targets = line.partition("\t")
        if not tab or not name.strip() or not targets.strip():
            raise SbirError(f"{path}:{number}: expected '<class><TAB><synsets or indices>', got {line.strip()!r}")
        indices = set()
        for target in re.split(r"[\s,]+", targets.strip()):
            if target.isdigit() and int(target) < IMAGENET_CLASSES:
                indices.add(int(target))
            elif target in index:
                indices.add(index[target])
            else:
                raise SbirError(f"{path}:{number}: {target!r} is neither an ImageNet-1k synset id nor a class "
                                f"index 0-{IMAGENET_CLASSES - 1}")
        mapping[name.strip()] = sorted(indices | set(mapping.get(name.strip(), ())))
    return mapping
