"""`python -m inception_jax predict`: top-k classes of image files from a trained model.

Images are preprocessed as evaluation does (`preprocessing.EvalPreprocess` with the
run's image size and resize ratio, to uint8 pixels normalized on the device with its
mean and std; 1 or 10 crops whose softmax outputs are averaged) and classified by one
`jax.jit` forward per batch-size bucket: batches are the largest bucket, and the last
one is padded to the smallest bucket that holds it, so any number of images compiles at
most `len(buckets)` times. Files that are missing, empty, not decodable, or whose header
declares more than the config's `max_image_pixels` (refused unread) are reported by name
and skipped.
"""

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import sys
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax import paths
from inception_jax import xla_options
from inception_jax.data import image_headers
from inception_jax.data import pipeline
from inception_jax.data import preprocessing
from inception_jax.serving import evaluation
from inception_jax.training import metric_logging
from inception_jax.training import rundir

DEFAULT_BUCKETS = (1, 8, 32, 128)


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The most probable classes of one image, most probable first."""
  path: str
  classes: tuple[int, ...]
  names: tuple[str, ...]
  probabilities: tuple[float, ...]


def bucket_size(count: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `count` images (the largest if none does)."""
  return next((b for b in sorted(buckets) if b >= count), max(buckets))


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files as given; folders replaced by the image files under them, sorted."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      files.extend(sorted(str(p) for p in pathlib.Path(path).rglob('*')
                          if p.is_file() and p.suffix.lower() in preprocessing.IMAGE_EXTENSIONS))
    else:
      files.append(path)
  return files


def unreadable_files(paths: Sequence[str], max_pixels: int) -> dict[str, str]:
  """{path: reason} for the paths that are missing, not files, empty, or too large.

  Too large: the header declares more than `max_pixels` pixels (`image_headers`).
  """
  bad = {}
  for path in paths:
    if not os.path.exists(path):
      bad[path] = 'no such file'
    elif not os.path.isfile(path):
      bad[path] = 'not a file'
    elif os.path.getsize(path) == 0:
      bad[path] = 'empty file'
    elif reason := image_headers.refusal(path, max_pixels):
      bad[path] = reason
  return bad


def preprocessed_batches(paths: Sequence[str], preprocess: preprocessing.EvalPreprocess,
                         batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
  """Yields (paths, images) batches of up to `batch_size` of the files that decode.

  Files that fail to read or decode are left out; compare the yielded paths with
  `paths` to find them.
  """
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
  ds = ds.map(lambda path: (path, preprocess(tf.io.read_file(path))),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors().batch(batch_size).prefetch(1)
  for batch_paths, images in ds.as_numpy_iterator():
    yield [p.decode() for p in batch_paths], images


class Predictor:
  """A checkpoint's model, preprocessing and class names, ready to classify images."""

  def __init__(self, path: str | pathlib.Path, crops: int = 1,
               buckets: Sequence[int] = DEFAULT_BUCKETS,
               config: ml_collections.ConfigDict | None = None):
    """Loads `path` (work dir, checkpoints/ or step dir) with its run's config.json.

    `config` replaces the saved config (e.g. with overrides applied).
    """
    if not buckets or min(buckets) < 1:
      raise errors.ConfigError(f'buckets must be positive batch sizes, got {tuple(buckets)}.')
    if config is None:
      config = rundir.load_config(rundir.workdir_of(path))
    self.loaded = evaluation.load_model(path, config)
    preprocessing.warn_if_mirrors_unseen(crops, config.random_flip)
    self.class_names = tuple(self.loaded.meta['class_names'])
    self.buckets = tuple(sorted(set(buckets)))
    self.preprocess = pipeline.eval_preprocess(config, crops)
    # Runs saved before the field existed get its default.
    self.max_image_pixels = config.get('max_image_pixels',
                                       config_lib.get_base_config().max_image_pixels)
    self._jitted = jax.jit(
        functools.partial(evaluation.probabilities, self.loaded),
        compiler_options=xla_options.for_model(jax.default_backend(), self.loaded.model.dtype))
    self._compiled: dict[tuple[int, ...], jax.stages.Compiled] = {}

  @property
  def num_compilations(self) -> int:
    """How many batch shapes the forward has been compiled for so far."""
    return len(self._compiled)

  def _forward(self, images: np.ndarray) -> jax.Array:
    """Probabilities of one padded batch, compiled once per batch shape."""
    if images.shape not in self._compiled:
      self._compiled[images.shape] = self._jitted.lower(self.loaded.variables, images).compile()
    return self._compiled[images.shape](self.loaded.variables, images)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """[N, classes] class probabilities of N preprocessed images (`preprocess`'s uint8)."""
    largest = self.buckets[-1]
    probs = []
    for start in range(0, len(images), largest):
      chunk = images[start:start + largest]
      size = bucket_size(len(chunk), self.buckets)
      padded = np.zeros((size, *chunk.shape[1:]), chunk.dtype)
      padded[:len(chunk)] = chunk
      probs.append(np.asarray(self._forward(padded))[:len(chunk)])
    return np.concatenate(probs) if probs else np.zeros((0, len(self.class_names)), np.float32)

  def predict(self, paths: Sequence[str], top_k: int = 5
              ) -> tuple[list[Prediction], dict[str, str]]:
    """(top-k predictions of the readable files in order, {skipped path: reason})."""
    skipped = unreadable_files(paths, self.max_image_pixels)
    readable = [p for p in paths if p not in skipped]
    k = min(top_k, len(self.class_names))
    predictions = []
    progress = metric_logging.Progress('classifying', len(readable))
    for batch_paths, images in preprocessed_batches(readable, self.preprocess,
                                                    self.buckets[-1]):
      probs = self.probabilities(images)
      progress.update(len(batch_paths))
      for path, p in zip(batch_paths, probs):
        top = np.argsort(-p, kind='stable')[:k]
        predictions.append(Prediction(
            path=path, classes=tuple(int(c) for c in top),
            names=tuple(self.class_names[c] for c in top),
            probabilities=tuple(float(p[c]) for c in top)))
    decoded = {p.path for p in predictions}
    skipped.update({p: 'cannot be decoded as a JPEG, PNG, GIF or BMP image'
                    for p in readable if p not in decoded})
    return predictions, {p: skipped[p] for p in paths if p in skipped}


def predict_command(args: argparse.Namespace) -> None:
  """`predict`: prints (and with --json writes) the top-k classes of each image."""
  predictor = Predictor(args.path, crops=args.crops, buckets=args.buckets or DEFAULT_BUCKETS)
  predictions, skipped = predictor.predict(expand_paths(args.images), top_k=args.top_k)
  for p in predictions:
    print(f'{p.path}: ' + ' | '.join(f'{name} {prob:.4f}'
                                     for name, prob in zip(p.names, p.probabilities)))
  for path, reason in skipped.items():
    print(f'skipped {path}: {reason}', file=sys.stderr)
  if not predictions:
    raise errors.UserError(f'no image could be classified ({len(skipped)} skipped): give '
                           'image files, or folders holding some.')
  print(f'{len(predictions)} image(s) classified, {len(skipped)} skipped.', file=sys.stderr)
  if args.json:
    paths.as_path(args.json).write_text(json.dumps(
        {'predictions': [dataclasses.asdict(p) for p in predictions], 'skipped': skipped},
        indent=1))
    print(f'wrote {args.json}', file=sys.stderr)
