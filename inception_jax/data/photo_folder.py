"""A folder of photo-like JPEGs cut from real photographs, to time the input pipeline on.

Decoding cost depends on content: noise or flat colour JPEGs decode at other speeds than
photographs. The crops come from scikit-learn's two sample photographs (427 x 640), scaled,
mirrored and cut at random to 500 x 375 (ImageNet's most common stored size), with mild
sensor noise, saved at JPEG quality 88-96 as cameras and ImageNet's files are.
"""

import os

import numpy as np
from PIL import Image
from sklearn import datasets as sklearn_datasets

WIDTH, HEIGHT = 500, 375
_SCALE_RANGE = (0.9, 1.6)  # of the 427-pixel-high photos: every crop fits
_QUALITY_RANGE = (88, 96)
_NOISE_STD = 2.0  # in 0..255 units


def write_photo_folder(root: str, num_images: int = 1024, num_classes: int = 8,
                       split: str = 'train', seed: int = 0) -> str:
  """Writes `root/<split>/class_<k>/<index>.jpg` (`num_images` files) and returns `root`."""
  rng = np.random.default_rng(seed)
  photos = [Image.fromarray(photo) for photo in sklearn_datasets.load_sample_images().images]
  for index in range(num_images):
    class_dir = os.path.join(root, split, f'class_{index % num_classes}')
    os.makedirs(class_dir, exist_ok=True)
    quality = int(rng.integers(_QUALITY_RANGE[0], _QUALITY_RANGE[1] + 1))
    _photo_crop(photos[index % len(photos)], rng).save(
        os.path.join(class_dir, f'{index:05d}.jpg'), quality=quality)
  return root


def _photo_crop(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
  """A randomly scaled, mirrored and placed WIDTH x HEIGHT crop of `photo`, with noise."""
  scale = rng.uniform(*_SCALE_RANGE)
  width, height = photo.size
  scaled = photo.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
  x = int(rng.integers(0, scaled.width - WIDTH + 1))
  y = int(rng.integers(0, scaled.height - HEIGHT + 1))
  pixels = np.asarray(scaled.crop((x, y, x + WIDTH, y + HEIGHT)), np.float32)
  if rng.random() < 0.5:
    pixels = pixels[:, ::-1]
  pixels = pixels + rng.normal(0, _NOISE_STD, pixels.shape)
  return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
