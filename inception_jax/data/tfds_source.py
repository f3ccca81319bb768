"""tfds image-classification data sets: prepared on this machine, read as per-process shares.

A data set is read from `config.data_dir`. One that is not prepared there is
prepared by a single-process job, as `tfds.load` does: `sklearn_digits` (shipped with
this package) is built, data sets that need manual downloads (e.g. `imagenet2012`)
are prepared from `config.manual_dir` when it holds the files, and the others are
downloaded unless `config.download` is False. A multi-process job prepares nothing
(its processes would race): it fails at once with the command that prepares the data
set (`python -m inception_jax prepare NAME`). Each process reads
`tfds.even_splits(split, n=process_count)[process_index]`.
"""

import argparse
import contextlib
import dataclasses
import functools
import io
import os
import textwrap
import time
from typing import Iterator

from absl import logging
import jax
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.siscore import labels as imagenet_labels

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax.data import datasets  # registers the embedded data sets with tfds

BUILT_ON_FIRST_USE = (datasets.SklearnDigits.name,)


@dataclasses.dataclass(frozen=True)
class TfdsShare:
  """One process's share of a tfds split: undecoded {'image', 'label'} examples."""
  dataset: tf.data.Dataset  # one epoch in the stored order
  num_examples: int
  shuffle_buffer: int

  def in_order(self) -> tf.data.Dataset:
    return self.dataset

  def shuffled(self, seed: tf.Tensor) -> tf.data.Dataset:
    """One epoch shuffled by a window of `shuffle_buffer` examples, seeded by `seed`."""
    scalar_seed = tf.random.stateless_uniform(
        [], seed, minval=None, maxval=None, dtype=tf.int64)
    return self.dataset.shuffle(self.shuffle_buffer, seed=scalar_seed)


def share(config: ml_collections.ConfigDict, split: str, process_index: int,
          process_count: int) -> TfdsShare:
  """The undecoded examples of `split` that process `process_index` reads."""
  builder = prepared_builder(config)
  image_key, label_key = _image_key(builder), _label_key(builder)
  split_size(builder, split)  # fails with the data set's splits if it is unknown
  even_share = tfds.even_splits(split, n=process_count)[process_index]
  num_examples = split_size(builder, even_share)
  ds = builder.as_dataset(
      split=even_share, shuffle_files=False,
      decoders={image_key: tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.map(lambda example: {'image': example[image_key], 'label': example[label_key]})
  return TfdsShare(ds, num_examples, config.shuffle_buffer)


def class_names(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
  """The class names of an image-classification data set, in label order."""
  return tuple(builder.info.features[_label_key(builder)].names)


def split_size(builder: tfds.core.DatasetBuilder, split) -> int:
  """Number of examples in a tfds split, slice or even split."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as error:
    raise errors.ConfigError(
        f"Split '{split}' is not in '{builder.name}' (splits: "
        f"{', '.join(builder.info.splits)}); set config.train_split / "
        'config.eval_split to one of them or a tfds slice of one.') from error


def prepared_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder of `config.dataset`, prepared or failing with what to do."""
  builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
  if builder.name in BUILT_ON_FIRST_USE:
    with _quiet_tfds():
      prepared = builder.is_prepared()
    return builder if prepared else _build_on_first_use(config, builder)
  if builder.is_prepared():
    return builder
  manual_dir = config.manual_dir or os.path.join(builder.data_dir_root, 'downloads',
                                                 'manual')
  if not _can_prepare_manually(builder, manual_dir):
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS or not config.download or jax.process_count() > 1:
      raise errors.DatasetNotPreparedError(_preparation_message(builder, manual_dir))
    download_and_prepare(builder)
    return tfds.builder(config.dataset, data_dir=config.data_dir or None)
  logging.warning("Preparing '%s' from %s into %s; this runs once and can take hours.",
                  builder.name, manual_dir, builder.data_dir)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))
  except (AssertionError, OSError, tf.errors.OpError) as error:  # e.g. missing files
    raise errors.DatasetNotPreparedError(
        f"Preparing '{builder.name}' from {manual_dir} failed ({error!r}).\n"
        + _preparation_message(builder, manual_dir)) from error
  return builder


def download_and_prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Downloads and prepares a tfds data set that needs no manual files, as one line of ours.

  tfds's own lines and progress bars stay quiet, as for the embedded data set.
  """
  print(f"downloading and preparing '{builder.name}' into {builder.data_dir} (once) ...",
        end='', flush=True)
  start = time.monotonic()
  try:
    with _quiet_tfds():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except (tfds.download.DownloadError, OSError, tf.errors.OpError) as error:
    print(' failed', flush=True)
    raise errors.DatasetNotPreparedError(
        f"downloading '{builder.name}' failed ({error}); check the connection, or prepare "
        f'it on a machine that has one: {_prepare_command(builder)}') from error
  print(f' done in {time.monotonic() - start:.0f} s', flush=True)


def prepare_command(args: argparse.Namespace) -> None:
  """`prepare NAME`: the tfds data set downloaded (or built, or read from manual files) once."""
  config = config_lib.get_base_config()
  config.dataset, config.data_dir, config.manual_dir = args.name, args.data_dir, args.manual_dir
  builder = prepared_builder(config)
  print(f"'{builder.name}' is prepared in {builder.data_dir}: " + ', '.join(
      f'{split} {info.num_examples}' for split, info in builder.info.splits.items()))


def _prepare_command(builder: tfds.core.DatasetBuilder) -> str:
  return f'python -m inception_jax prepare {builder.name} --data_dir {builder.data_dir_root}'


def _build_on_first_use(config: ml_collections.ConfigDict,
                        builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Builds an embedded data set; tolerates another process finishing first."""
  print(f"preparing the embedded data set '{builder.name}' in {builder.data_dir} (once)",
        flush=True)
  with _quiet_tfds():
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except OSError:  # tfds's final rename fails when the folder appeared meanwhile
      if not builder.is_prepared():
        raise
  return tfds.builder(config.dataset, data_dir=config.data_dir or None)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
  """tfds's warnings, prints and progress bars silenced: an embedded data set's build is ours.

  Its folder check warns about the empty folder it is about to fill, and its build prints
  sizes it does not know and one progress bar per split.
  """
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(True)  # tfds's default, which the manual preparations keep
    logging.set_verbosity(verbosity)


def _can_prepare_manually(builder: tfds.core.DatasetBuilder, manual_dir: str) -> bool:
  """Whether `builder` needs manual files, `manual_dir` has some and one process runs."""
  return (bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS) and os.path.isdir(manual_dir)
          and bool(os.listdir(manual_dir)) and jax.process_count() == 1)


def _preparation_message(builder: tfds.core.DatasetBuilder, manual_dir: str) -> str:
  """How to prepare `builder`'s data set, for a DatasetNotPreparedError."""
  name, data_dir = builder.name, builder.data_dir_root
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    instructions = textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).strip()
    return (
        f"Data set '{name}' is not prepared in data_dir {data_dir}, and it needs files "
        f"that you download yourself:\n{textwrap.indent(instructions, '  ')}\n"
        f'Put them in {manual_dir} (or set config.manual_dir), then either run '
        'training as a single process, which prepares the data set once, or run:\n'
        f'  {_prepare_command(builder)} --manual_dir {manual_dir}')
  why = ('a run of several processes does not download' if jax.process_count() > 1
         else 'config.download is False')
  return (f"Data set '{name}' is not prepared in data_dir {data_dir} and {why}; prepare it "
          f'once with: {_prepare_command(builder)}')


def _image_key(builder: tfds.core.DatasetBuilder) -> str:
  """The name of the image feature of an image-classification data set."""
  key = _supervised_keys(builder)[0]
  if not isinstance(builder.info.features[key], tfds.features.Image):
    raise errors.ConfigError(
        f"Feature '{key}' of '{builder.name}' is not a tfds Image; this "
        'pipeline reads encoded images only.')
  return key


def _label_key(builder: tfds.core.DatasetBuilder) -> str:
  """The name of the ClassLabel feature of an image-classification data set."""
  key = _supervised_keys(builder)[1]
  if not isinstance(builder.info.features[key], tfds.features.ClassLabel):
    raise errors.ConfigError(f"Feature '{key}' of '{builder.name}' is not a ClassLabel.")
  return key


def _supervised_keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
  """The (input, target) feature names of a supervised tfds data set."""
  keys = builder.info.supervised_keys
  if not keys or len(keys) != 2 or not all(isinstance(key, str) for key in keys):
    raise errors.ConfigError(
        f"'{builder.name}' has no (image, label) supervised_keys; choose "
        'an image-classification data set.')
  return keys


@functools.cache
def synset_names() -> dict[str, str]:
  """ImageNet synset id -> readable name, from the lists that ship with tfds."""
  synsets = tfds.core.tfds_path('datasets/imagenet2012/labels.txt').read_text().split()
  return dict(zip(synsets, imagenet_labels.IMAGENET_LABELS_LIST, strict=True))
