"""From the pipelines' uint8 pixels to model inputs, on the device inside the jitted step.

The pipelines hand over uint8 RGB (a quarter of float32's bytes to batch, move and copy
to the device) and the step normalizes, where the arithmetic costs nothing next to the
first convolution.
"""

from typing import Sequence

import jax
import jax.numpy as jnp


def normalize(pixels: jax.Array, mean_rgb: Sequence[float],
              std_rgb: Sequence[float]) -> jax.Array:
  """float32 `(pixels - mean_rgb) / std_rgb` of uint8 RGB pixels [..., 3] on 0..255."""
  if pixels.dtype != jnp.uint8:
    raise TypeError(f'expected uint8 RGB pixels (as the input pipelines give), got '
                    f'{pixels.dtype}: pass pixels on 0..255, or give already normalized '
                    'images to the model directly.')
  return ((pixels.astype(jnp.float32) - jnp.asarray(mean_rgb, jnp.float32))
          / jnp.asarray(std_rgb, jnp.float32))
