"""Image folders: `<root>/<split>/<class>/*.{jpg,jpeg,png,gif,bmp}` (any case) as per-process shares.

Classes are the sorted union of the class folders of all splits. Each process reads
every `process_count`-th file of a split's sorted file list and checks, once per split,
that its files decode (JPEGs at 1/8 scale, which still reads all their data). Files whose
header declares more than `max_image_pixels` pixels are refused before that check
decodes them (`image_headers`). With `on_bad_image='skip'` (the default) bad files are
left out, and each is logged by name with a count; with `'fail'` the first check raises
an error naming them.
"""

import dataclasses
import functools
import os
from typing import Sequence

from absl import logging
import ml_collections
import tensorflow as tf

from inception_jax import errors
from inception_jax.data import image_headers
from inception_jax.data import preprocessing

_JPEG_CHECK_RATIO = 8


@dataclasses.dataclass(frozen=True)
class FolderShare:
  """One process's share of an image-folder split: undecoded {'image', 'label'}."""
  paths: tuple[str, ...]
  labels: tuple[int, ...]

  @property
  def num_examples(self) -> int:
    return len(self.paths)

  def in_order(self) -> tf.data.Dataset:
    return self._read(tf.range(self.num_examples))

  def shuffled(self, seed: tf.Tensor) -> tf.data.Dataset:
    """One epoch in the order of a full permutation seeded by `seed`."""
    return self._read(tf.random.experimental.stateless_shuffle(
        tf.range(self.num_examples), seed))

  def _read(self, order: tf.Tensor) -> tf.data.Dataset:
    paths = tf.gather(tf.constant(self.paths, tf.string), order)
    labels = tf.gather(tf.constant(self.labels, tf.int32), order)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda path, label: {'image': tf.io.read_file(path), 'label': label})


def root(config: ml_collections.ConfigDict) -> str:
  """`config.image_folder`, checked to be a folder."""
  if not os.path.isdir(config.image_folder):
    raise errors.ConfigError(
        f"config.image_folder='{config.image_folder}' is not a folder; with "
        "dataset='image_folder' it must hold <split>/<class>/<image> files.")
  return config.image_folder


def splits(root: str) -> list[str]:
  """The split folders of an image folder."""
  return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


@functools.cache
def class_names(root: str) -> tuple[str, ...]:
  """The sorted union of the class folders of all splits."""
  return tuple(sorted({entry.name for split in splits(root)
                       for entry in os.scandir(os.path.join(root, split))
                       if entry.is_dir()}))


@functools.cache
def list_split(root: str, split: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """The sorted image files of a split and their labels."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise errors.ConfigError(
        f"Image folder {root} has no split '{split}' (splits: "
        f"{', '.join(splits(root))}); set config.train_split / "
        'config.eval_split to one of them.')
  paths, labels = [], []
  for label, name in enumerate(class_names(root)):
    class_dir = os.path.join(split_dir, name)
    if os.path.isdir(class_dir):
      files = sorted(entry.path for entry in os.scandir(class_dir)
                     if entry.name.lower().endswith(preprocessing.IMAGE_EXTENSIONS))
      paths.extend(files)
      labels.extend([label] * len(files))
  return tuple(paths), tuple(labels)


@functools.cache
def share(root: str, split: str, process_index: int, process_count: int,
          on_bad_image: str, max_image_pixels: int) -> FolderShare:
  """Every `process_count`-th file of a split, from `process_index`, bad ones handled.

  Cached: each process checks its files once per split and run.
  """
  if on_bad_image not in ('skip', 'fail'):
    raise errors.ConfigError(f"on_bad_image='{on_bad_image}'; use 'skip' or 'fail'.")
  paths, labels = list_split(root, split)
  paths = paths[process_index::process_count]
  labels = labels[process_index::process_count]
  bad = find_bad_images(paths, max_image_pixels)
  if bad and on_bad_image == 'fail':
    listing = '\n'.join(f'  {path}: {reason}' for path, reason in sorted(bad.items()))
    raise errors.BadImageError(f'{len(bad)} bad image file(s) in split \'{split}\' of {root}:\n'
                               f"{listing}\nRemove or fix them, or set on_bad_image='skip'.")
  for path, reason in sorted(bad.items()):
    logging.warning('Skipping bad image %s: %s.', path, reason)
  if bad:
    logging.warning("Skipped %d of %d image files in split '%s' of %s.", len(bad),
                    len(paths), split, root)
  kept = [(path, label) for path, label in zip(paths, labels) if path not in bad]
  return FolderShare(tuple(path for path, _ in kept), tuple(label for _, label in kept))


def find_bad_images(paths: Sequence[str], max_pixels: int) -> dict[str, str]:
  """Returns {path: reason} for the files that are empty, too large or cannot be decoded.

  Too large: the header declares more than `max_pixels` pixels; such files are never
  decoded.
  """
  bad = {}
  for path in paths:
    reason = ('empty file' if os.path.getsize(path) == 0
              else image_headers.refusal(path, max_pixels))
    if reason:
      bad[path] = reason
  readable = [path for path in paths if path not in bad]
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(readable, tf.string))
  ds = ds.map(lambda path: (path, _decoded_shape(tf.io.read_file(path))),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  decoded = {path.decode() for path, _ in ds.ignore_errors().as_numpy_iterator()}
  bad.update({path: 'cannot be read or decoded' for path in readable
              if path not in decoded})
  return bad


def _decoded_shape(image_bytes: tf.Tensor) -> tf.Tensor:
  """Decodes an image (a JPEG at reduced scale) and returns its shape."""
  image = tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_jpeg(image_bytes, channels=3, ratio=_JPEG_CHECK_RATIO),
      lambda: preprocessing.decode_rgb(image_bytes))
  return tf.shape(image)
