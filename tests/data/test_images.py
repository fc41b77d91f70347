"""Image input (sbir.data.images): decoding a stored image to an RGB array of the model's size."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from sbir.data.images import load_image
from tests.helpers import encoded


def test_load_image_makes_grey_rgb_and_resizes():
    data, _ = encoded("sketch", seed=1, size=40)
    array = load_image(data, 24)
    assert array.shape == (24, 24, 3) and array.dtype == np.uint8
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
    photo, _ = encoded("photo", seed=2, size=32)
    same = load_image(photo, 32)
    assert np.array_equal(same, np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")))
