"""Measures the input pipeline alone: images per second of train and eval preprocessing.

Writes an image folder of generated 500x375 JPEGs (ImageNet's typical size) to a
temporary directory and times the tf.data pipelines of `inception_jax.data.pipeline`
on this machine's CPUs, without JAX arrays or a model.

From the repository root:

  python -m experiments.benchmark_input_pipeline --image_size=224 --batch_size=64
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from inception_jax import config as config_lib
from inception_jax.data import pipeline

_NUM_IMAGES = flags.DEFINE_integer('num_images', 320, 'Generated JPEGs per split.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Crop size of the pipeline.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Batch size.')
_BATCHES = flags.DEFINE_integer('batches', 20,
                                'Training batches timed, after one of warm-up.')

_WIDTH, _HEIGHT = 500, 375
_NUM_CLASSES = 4
_TRAIN_RUNS = {
    'Inception crop + flip': {},
    '+ colour distortion + random resize method': {'color_distortion': True,
                                                   'random_resize_method': True},
    'Inception crop + flip, deterministic_data': {'deterministic_data': True},
}


def _photo_like(rng: np.random.Generator) -> Image.Image:
  """A 500x375 image with smooth structure and fine noise, like a photo to JPEG."""
  coarse = rng.uniform(0, 255, (_HEIGHT // 25, _WIDTH // 25, 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((_WIDTH, _HEIGHT), Image.BICUBIC))
  noise = rng.normal(0, 12, image.shape)
  return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))


def _write_folder(root: str, num_images: int) -> None:
  """Writes root/{train,test}/<class>/*.jpg with `num_images` JPEGs per split."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for index in range(num_images):
      class_dir = os.path.join(root, split, f'class_{index % _NUM_CLASSES}')
      os.makedirs(class_dir, exist_ok=True)
      _photo_like(rng).save(os.path.join(class_dir, f'{index:05d}.jpg'), quality=90)


def _images_per_second(dataset, batches: int, batch_size: int) -> float:
  """Iterates one warm-up batch, then times `batches` batches."""
  iterator = dataset.as_numpy_iterator()
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def _train_rate(config, overrides: dict[str, bool]) -> float:
  """Training images per second with `overrides` of the config."""
  config = config.copy_and_resolve_references()
  config.update(overrides)
  dataset = pipeline.make_train_dataset(config, process_index=0, process_count=1)
  return _images_per_second(dataset, _BATCHES.value, config.batch_size)


def _eval_rate(config, crops: int) -> float:
  """Evaluation images (each giving `crops` crops) per second, over the eval split."""
  dataset = pipeline.make_eval_dataset(config, crops=crops, process_index=0,
                                             process_count=1)
  batches = pipeline.num_eval_batches(config, process_count=1) - 1
  return _images_per_second(dataset, batches, config.eval_batch_size)


def main(argv) -> None:
  del argv
  with tempfile.TemporaryDirectory() as root:
    _write_folder(root, _NUM_IMAGES.value)
    config = config_lib.get_base_config()
    config.update(dict(dataset='image_folder', image_folder=root,
                       image_size=_IMAGE_SIZE.value, batch_size=_BATCH_SIZE.value,
                       eval_batch_size=_BATCH_SIZE.value))
    print(f'{os.cpu_count()} CPUs; {_WIDTH}x{_HEIGHT} JPEGs -> {_IMAGE_SIZE.value}; '
          f'batch {_BATCH_SIZE.value}')
    for name, overrides in _TRAIN_RUNS.items():
      print(f'train, {name:44s} {_train_rate(config, overrides):8.1f} images/s')
    for crops in (1, 10):
      print(f'eval, {crops:2d} crop(s){"":35s} {_eval_rate(config, crops):8.1f} images/s')


if __name__ == '__main__':
  app.run(main)
