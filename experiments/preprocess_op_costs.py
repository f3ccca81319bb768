"""CPU milliseconds per image of each part of the training preprocessing, on one thread.

  python -m experiments.preprocess_op_costs [--images 128]

On photo-like 500x375 JPEGs (`photo_folder`), each variant a `tf.function` run over
every image (Inception crop boxes from per-image seeds) with TensorFlow held to one
thread; the best of 3 passes. PIL's draft + random crop + resize to uint8
(`throughput.pil_bound`) on the same files is the floor the pipeline is compared with.
"""

import argparse
import glob
import os
import tempfile
import time
from typing import Callable

import tensorflow as tf

from inception_jax.data import photo_folder, throughput
from inception_jax.data import preprocessing as pp

SIZE = 224
AREA, ASPECT = (0.08, 1.0), (3 / 4, 4 / 3)


def _crop(image_bytes: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return pp.decode_and_crop(image_bytes, lambda h, w: pp.sample_inception_box(
      h, w, seed, AREA, ASPECT))


VARIANTS: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    'whole-image decode': lambda b, s: pp.decode_rgb(b),
    'decode inside the crop': _crop,
    '+ antialiased bilinear resize': lambda b, s: tf.image.resize(
        _crop(b, s), [SIZE, SIZE], antialias=True),
    '+ rounding to uint8': lambda b, s: pp.to_pixels(tf.image.resize(
        _crop(b, s), [SIZE, SIZE], antialias=True)),
    'TrainPreprocess (+ seeds, flip)': pp.TrainPreprocess(SIZE),
    'plain bilinear resize instead (aliases)': lambda b, s: pp.to_pixels(tf.image.resize(
        _crop(b, s), [SIZE, SIZE], antialias=False)),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=128)
  args = parser.parse_args()
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  with tempfile.TemporaryDirectory() as scratch:
    root = photo_folder.write_photo_folder(scratch, args.images)
    paths = sorted(glob.glob(os.path.join(root, 'train', '*', '*')))
    encoded = [tf.constant(open(p, 'rb').read()) for p in paths]
    seeds = [tf.constant([1, i]) for i in range(len(paths))]
    for name, fn in VARIANTS.items():
      run = tf.function(fn)
      for image_bytes, seed in zip(encoded[:4], seeds):
        run(image_bytes, seed)
      best = float('inf')
      for _ in range(3):
        start = time.process_time()
        for image_bytes, seed in zip(encoded, seeds):
          run(image_bytes, seed)
        best = min(best, time.process_time() - start)
      print(f'{name:42s} {best / len(paths) * 1e3:5.2f} ms')
    pil = throughput.pil_bound(paths, SIZE)
    print(f"{'PIL draft + crop + resize to uint8':42s} "
          f'{min(1e3 / pil()[1] for _ in range(3)):5.2f} ms')


if __name__ == '__main__':
  main()
