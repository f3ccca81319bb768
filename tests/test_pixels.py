"""The steps' normalization of uint8 pixels, checked by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.data import pixels


def test_normalize_is_pixels_minus_mean_over_std():
  image = np.array([[[50, 0, 255]]], np.uint8)
  normalized = pixels.normalize(jnp.asarray(image), (10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
  assert normalized.dtype == jnp.float32
  np.testing.assert_allclose(normalized, [[[20.0, -5.0, 45.0]]])


def test_normalize_refuses_images_that_are_not_uint8_pixels():
  with pytest.raises(TypeError, match='expected uint8 RGB pixels.*got float32'):
    pixels.normalize(jnp.zeros((1, 2, 2, 3)), (0.0,) * 3, (1.0,) * 3)
