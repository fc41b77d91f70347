"""The class -> ImageNet-1k correspondence of SAKE's semantic adjustment: synsets from photo ids, a class map
file, and one-line errors naming the file and line of a bad map."""

from __future__ import annotations

import pytest

from sbir.errors import SbirError
from sbir.models.imagenet import classes_from_instances, imagenet_synsets, read_class_map, synset_index


def test_the_synset_list_is_imagenet_1k_in_class_order():
    synsets = imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000
    assert synsets == tuple(sorted(synsets))  # the classifiers' order: sorted synset ids
    assert synsets[0] == "n01440764" and synset_index()["n02690373"] == 404  # tench; airliner


def test_classes_from_photo_ids():
    classes = ["airplane", "cat", "shark"]
    # airliner (404) and a synset outside ImageNet-1k; two tabby (281) photos, one with Sketchy-Extended's prefix;
    # great white shark (2) from a photo whose id names it
    labels = [0, 0, 1, 1, 2]
    instances = ["n02690373_1", "n02691156_7", "n02123045_3", "ext:n02123045_9", "n01484850_4"]
    assert classes_from_instances(classes, labels, instances) == {"airplane": [404], "cat": [281], "shark": [2]}
    assert classes_from_instances(classes, [0], ["photo_7"]) == {}


def test_read_class_map(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("# class -> ImageNet\nairplane\tn02690373, 405\ncat\t281 n02123159  # tabby, tiger cat\n\n")
    assert read_class_map(path) == {"airplane": [404, 405], "cat": [281, 282]}


@pytest.mark.parametrize("text, message", [
    ("airplane n02690373\n", "map.txt:1: expected '<class><TAB><synsets or indices>'"),
    ("cat\t281\ndog\tn99999999\n", "map.txt:2: 'n99999999' is neither an ImageNet-1k synset"),
    ("cat\t1000\n", "map.txt:1: '1000' is neither"),
    ("cat\t\n", "map.txt:1: expected"),
])
def test_a_bad_class_map_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "map.txt"
    path.write_text(text)
    with pytest.raises(SbirError, match=message.replace("<", ".").replace(">", ".")) as raised:
        read_class_map(path)
    assert "\n" not in str(raised.value)


def test_a_missing_class_map_is_one_line(tmp_path):
    with pytest.raises(SbirError, match="none.txt: cannot read the ImageNet class map"):
        read_class_map(tmp_path / "none.txt")
