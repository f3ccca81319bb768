"""Input pipeline: tfds data sets and image folders as sharded global batches.

Sources (`config.dataset`):
  * a tfds image-classification data set by name, read from `config.data_dir`. It must
    be prepared already, with two exceptions: `sklearn_digits` (shipped with this
    package) is built on first use, and data sets that need manual downloads (e.g.
    `imagenet2012`) are prepared from `config.manual_dir` when it holds the files and
    the job has a single process. Nothing is ever downloaded; a data set that is not
    prepared fails at once with the commands that prepare it.
  * `'image_folder'`: `config.image_folder/<split>/<class>/*.{jpg,jpeg,png,gif,bmp}` (any case).
    Classes are the sorted union of the class folders of all splits. Each process
    checks that its files decode, once per split (JPEGs at 1/8 scale, which still reads
    all their data). With `on_bad_image='skip'` (the default) unreadable or empty files
    are left out, and each is logged by name with a count; with `'fail'` the first
    check raises an error naming them.

Sharding: each JAX process reads a disjoint share of a split
(`tfds.even_splits(split, n=process_count)[process_index]`, or every
`process_count`-th file of the sorted file list), and the shares cover the split.

Training batches for step `s` are a pure function of (`config.seed`, `s`) when
`config.deterministic_data` is set: each epoch is one seeded shuffle of the process's
share (a full permutation for image folders; a `config.shuffle_buffer` window over
the stored order for tfds, which tfds shuffles when it prepares a data set), epochs
are counted arithmetically, the position within an epoch is reached by skipping
undecoded records, and each example's augmentation seed is derived from
(`config.seed`, its global index). Resuming at `start_step` therefore costs at most one
epoch of record reads, without decoding. Without `deterministic_data`, the same
seeds are used but parallel maps may reorder examples.
"""

import contextlib
import dataclasses
import functools
import io
import math
import os
import textwrap
from typing import Iterator, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.siscore import labels as imagenet_labels

from inception_jax import errors
from inception_jax import sharding
from inception_jax.data import datasets  # registers the embedded data sets with tfds
from inception_jax.data import preprocessing
from inception_jax.sharding import Batch

IMAGE_FOLDER = 'image_folder'
BUILT_ON_FIRST_USE = (datasets.SklearnDigits.name,)
_EPOCH_STREAM = 0  # seed stream of the per-epoch shuffles
_AUGMENT_STREAM = 1  # seed stream of the per-example augmentations
_JPEG_CHECK_RATIO = 8


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the trainer need to know about a data set.

  `split_sizes` has every split of the data set and the configured train and eval
  splits (which may be tfds slices such as 'train[:90%]'). For image folders, the
  sizes count image files, including any that `on_bad_image='skip'` leaves out.
  """
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  split_sizes: Mapping[str, int]


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Returns the DatasetInfo of `config.dataset`, preparing it if it is built on use."""
  if config.dataset == IMAGE_FOLDER:
    root = _folder_root(config)
    split_sizes = {split: len(_list_folder_split(root, split)[0])
                   for split in _folder_splits(root)}
    class_names = _folder_class_names(root)
    name = IMAGE_FOLDER
  else:
    builder = _prepared_builder(config)
    split_sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    class_names = tuple(builder.info.features[_label_key(builder)].names)
    name = builder.name
  for split in (config.train_split, config.eval_split):
    split_sizes[split] = _split_size(config, split)
  return DatasetInfo(name=name, num_classes=len(class_names),
                     class_names=_readable_class_names(class_names),
                     split_sizes=split_sizes)


def check_splits(config: ml_collections.ConfigDict, info: DatasetInfo,
                 splits: Sequence[str]) -> None:
  """Refuses, before anything compiles, a split without examples or with bad images.

  `info` is the data set's `get_dataset_info`. A split of an image folder is read
  and checked here (once: the result is cached for the pipelines), so
  `on_bad_image='fail'` refuses at start. Raises ConfigError or BadImageError
  naming the split and what to do.
  """
  for split in splits:
    if info.split_sizes[split] < 1:
      where = config.image_folder if config.dataset == IMAGE_FOLDER else config.dataset
      raise errors.ConfigError(
          f"split '{split}' of {where} has no examples; point the config at a split "
          '(config.train_split / config.eval_split) that holds some.')
    if config.dataset == IMAGE_FOLDER:
      _folder_share(_folder_root(config), split, *_process(None, None), config.on_bad_image)


def create_train_iterator(config: ml_collections.ConfigDict, mesh: Mesh,
                          start_step: int = 0) -> Iterator[Batch]:
  """Endless training batches `{'image': [B, H, W, 3] float32, 'label': [B] int32}`.

  B is `config.batch_size`; the arrays are global, sharded over the mesh axis 'data'.
  The first batch is the one of step `start_step`.
  """
  sharding.check_batch_divisible(config.batch_size, mesh, 'batch_size')
  return _global_batches(make_train_dataset(config, start_step=start_step), mesh)


def train_batch_spec(config: ml_collections.ConfigDict, mesh: Mesh
                     ) -> dict[str, jax.ShapeDtypeStruct]:
  """What `create_train_iterator` yields, as `jax.ShapeDtypeStruct`s with their sharding.

  Lets the training step be compiled before the first batch (or the state) exists.
  """
  split = sharding.batch_sharding(mesh)
  size = config.image_size
  return {'image': jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.float32,
                                        sharding=split),
          'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=split)}


def create_eval_iterator(config: ml_collections.ConfigDict, mesh: Mesh,
                         crops: int = 1) -> Iterator[Batch]:
  """One pass over `config.eval_split` as masked global batches.

  Yields `{'image', 'label' [B] int32, 'mask' [B] float32}` with B =
  `config.eval_batch_size`; images are [B, H, W, 3], or [B, crops, H, W, 3] for
  crops in (10, 144). Padding examples have mask 0, so summing over `mask` counts each
  example of the split exactly once; every process yields the same number of batches.
  """
  sharding.check_batch_divisible(config.eval_batch_size, mesh, 'eval_batch_size')
  return _global_batches(make_eval_dataset(config, crops=crops), mesh)


def make_train_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0,
                       process_index: int | None = None,
                       process_count: int | None = None) -> tf.data.Dataset:
  """The local (per-process) training batches as a `tf.data.Dataset`, without JAX arrays.

  Batches hold `config.batch_size // process_count` examples. `process_index` and
  `process_count` default to JAX's; tests pass them to simulate several processes.
  """
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch_size(config.batch_size, process_count, 'batch_size')
  share = _share(config, config.train_split, process_index, process_count)
  if share.num_examples == 0:
    raise errors.ConfigError(
        f'Process {process_index} of {process_count} has no examples of '
        f"split '{config.train_split}' of '{config.dataset}'.")
  first_example = start_step * local_batch
  first_epoch, offset = divmod(first_example, share.num_examples)
  preprocess = _train_preprocess(config)

  def epoch(index: tf.Tensor) -> tf.data.Dataset:
    return share.shuffled(_seed(config.seed, _EPOCH_STREAM, index))

  def prepare(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    global_index = index * process_count + process_index
    seed = _seed(config.seed, _AUGMENT_STREAM, global_index)
    return {'image': preprocess(example['image'], seed),
            'label': tf.cast(example['label'], tf.int32)}

  ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
  ds = ds.skip(offset).enumerate(first_example)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(
      _options(deterministic=config.deterministic_data))


def make_eval_dataset(config: ml_collections.ConfigDict, *, crops: int = 1,
                      process_index: int | None = None,
                      process_count: int | None = None) -> tf.data.Dataset:
  """The local (per-process) evaluation batches, padded, without JAX arrays.

  Every process yields `num_eval_batches(config, process_count)` batches of
  `config.eval_batch_size // process_count` examples.
  """
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch_size(config.eval_batch_size, process_count,
                                  'eval_batch_size')
  share = _share(config, config.eval_split, process_index, process_count)
  preprocess = eval_preprocess(config, crops)

  def prepare(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {'image': preprocess(example['image']),
            'label': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(1.0)}

  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros(preprocess.output_shape),
      'label': tf.constant(0),
      'mask': tf.constant(0.0),
  }).repeat()
  ds = share.in_order().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.concatenate(padding).take(num_eval_batches(config, process_count) * local_batch)
  ds = ds.batch(local_batch, drop_remainder=True)
  # Always in split order: ensembles and per-example predictions line models up by index.
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic=True))


def num_eval_batches(config: ml_collections.ConfigDict,
                     process_count: int | None = None) -> int:
  """Batches per process in one evaluation pass: enough for the largest share."""
  if process_count is None:
    process_count = jax.process_count()
  local_batch = _local_batch_size(config.eval_batch_size, process_count,
                                  'eval_batch_size')
  # Both ways of sharding give shares whose sizes differ by at most one example.
  largest_share = math.ceil(_split_size(config, config.eval_split) / process_count)
  return math.ceil(largest_share / local_batch)


def find_bad_images(paths: Sequence[str]) -> dict[str, str]:
  """Returns {path: reason} for the files that are empty or cannot be decoded."""
  bad = {path: 'empty file' for path in paths if os.path.getsize(path) == 0}
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


@dataclasses.dataclass(frozen=True)
class _TfdsShare:
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


@dataclasses.dataclass(frozen=True)
class _FolderShare:
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


def _share(config: ml_collections.ConfigDict, split: str, process_index: int,
           process_count: int) -> _TfdsShare | _FolderShare:
  """The undecoded examples of `split` that process `process_index` reads."""
  if config.dataset == IMAGE_FOLDER:
    return _folder_share(_folder_root(config), split, process_index, process_count,
                         config.on_bad_image)
  builder = _prepared_builder(config)
  image_key, label_key = _image_key(builder), _label_key(builder)
  _tfds_split_size(builder, split)  # fails with the data set's splits if it is unknown
  share = tfds.even_splits(split, n=process_count)[process_index]
  num_examples = _tfds_split_size(builder, share)
  ds = builder.as_dataset(
      split=share, shuffle_files=False,
      decoders={image_key: tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.map(lambda example: {'image': example[image_key], 'label': example[label_key]})
  return _TfdsShare(ds, num_examples, config.shuffle_buffer)


def _split_size(config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples (image files, for folders) in `split`."""
  if config.dataset == IMAGE_FOLDER:
    return len(_list_folder_split(_folder_root(config), split)[0])
  return _tfds_split_size(_prepared_builder(config), split)


def _tfds_split_size(builder: tfds.core.DatasetBuilder, split) -> int:
  """Number of examples in a tfds split, slice or even split."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as error:
    raise errors.ConfigError(
        f"Split '{split}' is not in '{builder.name}' (splits: "
        f"{', '.join(builder.info.splits)}); set config.train_split / "
        'config.eval_split to one of them or a tfds slice of one.') from error


def _prepared_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
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
    raise errors.DatasetNotPreparedError(_preparation_message(builder, manual_dir))
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
        f'  tfds build {name} --data_dir={data_dir} --manual_dir={manual_dir}')
  return (
      f"Data set '{name}' is not prepared in data_dir {data_dir}, and this pipeline "
      'does not download. Prepare it on a machine with internet access:\n'
      f'  tfds build {name} --data_dir={data_dir}\n'
      'then copy that data_dir here, or set config.data_dir to where it is.')


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


def _readable_class_names(names: Sequence[str]) -> tuple[str, ...]:
  """Replaces ImageNet synset ids (e.g. 'n01440764') by readable names ('tench, ...')."""
  readable = synset_names()
  if all(name in readable for name in names):
    return tuple(readable[name] for name in names)
  return tuple(names)


def _folder_root(config: ml_collections.ConfigDict) -> str:
  """`config.image_folder`, checked to be a folder."""
  if not os.path.isdir(config.image_folder):
    raise errors.ConfigError(
        f"config.image_folder='{config.image_folder}' is not a folder; with "
        "dataset='image_folder' it must hold <split>/<class>/<image> files.")
  return config.image_folder


def _folder_splits(root: str) -> list[str]:
  """The split folders of an image folder."""
  return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


@functools.cache
def _folder_class_names(root: str) -> tuple[str, ...]:
  """The sorted union of the class folders of all splits."""
  return tuple(sorted({entry.name for split in _folder_splits(root)
                       for entry in os.scandir(os.path.join(root, split))
                       if entry.is_dir()}))


@functools.cache
def _list_folder_split(root: str, split: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """The sorted image files of a split and their labels."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise errors.ConfigError(
        f"Image folder {root} has no split '{split}' (splits: "
        f"{', '.join(_folder_splits(root))}); set config.train_split / "
        'config.eval_split to one of them.')
  paths, labels = [], []
  for label, name in enumerate(_folder_class_names(root)):
    class_dir = os.path.join(split_dir, name)
    if os.path.isdir(class_dir):
      files = sorted(entry.path for entry in os.scandir(class_dir)
                     if entry.name.lower().endswith(preprocessing.IMAGE_EXTENSIONS))
      paths.extend(files)
      labels.extend([label] * len(files))
  return tuple(paths), tuple(labels)


@functools.cache
def _folder_share(root: str, split: str, process_index: int, process_count: int,
                  on_bad_image: str) -> _FolderShare:
  """Every `process_count`-th file of a split, from `process_index`, bad ones handled.

  Cached: each process checks its files once per split and run.
  """
  if on_bad_image not in ('skip', 'fail'):
    raise errors.ConfigError(f"on_bad_image='{on_bad_image}'; use 'skip' or 'fail'.")
  paths, labels = _list_folder_split(root, split)
  paths = paths[process_index::process_count]
  labels = labels[process_index::process_count]
  bad = find_bad_images(paths)
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
  return _FolderShare(tuple(path for path, _ in kept), tuple(label for _, label in kept))


def _train_preprocess(config: ml_collections.ConfigDict) -> preprocessing.TrainPreprocess:
  """The training preprocessing that `config` asks for."""
  return preprocessing.TrainPreprocess(
      image_size=config.image_size, mean_rgb=tuple(config.mean_rgb),
      std_rgb=tuple(config.std_rgb), crop=config.crop,
      area_range=tuple(config.crop_area_range),
      aspect_range=tuple(config.crop_aspect_range), random_flip=config.random_flip,
      color_distortion=config.color_distortion,
      random_resize_method=config.random_resize_method,
      eval_resize_ratio=config.eval_resize_ratio)


def eval_preprocess(config: ml_collections.ConfigDict,
                     crops: int) -> preprocessing.EvalPreprocess:
  """The evaluation preprocessing that `config` asks for, with `crops` crops."""
  return preprocessing.EvalPreprocess(
      image_size=config.image_size, mean_rgb=tuple(config.mean_rgb),
      std_rgb=tuple(config.std_rgb), resize_ratio=config.eval_resize_ratio, crops=crops)


def _seed(seed: int, stream: int, index: tf.Tensor) -> tf.Tensor:
  """A stateless seed [2] for item `index` of random stream `stream` under `seed`."""
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, stream], tf.int64), tf.cast(index, tf.int64))


def _options(deterministic: bool) -> tf.data.Options:
  """tf.data options: deterministic order, or faster parallel map in any order."""
  options = tf.data.Options()
  options.deterministic = deterministic
  return options


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process_index, process_count), defaulting to JAX's."""
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  if not 0 <= process_index < process_count:
    raise errors.ConfigError(f'process_index={process_index} is not in [0, {process_count}).')
  return process_index, process_count


def _local_batch_size(batch_size: int, process_count: int, field: str) -> int:
  """This process's part of a global batch."""
  if batch_size % process_count:
    raise errors.ConfigError(
        f'config.{field}={batch_size} is not divisible by the '
        f'{process_count} processes; use a multiple of {process_count}.')
  return batch_size // process_count


def _global_batches(ds: tf.data.Dataset, mesh: Mesh) -> Iterator[Batch]:
  """Assembles each process's local batches into global arrays sharded on 'data'."""
  split = sharding.batch_sharding(mesh)
  for local_batch in ds.as_numpy_iterator():
    yield jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(split, x), local_batch)


def hide_gpus_from_tensorflow() -> None:
  """Keeps TensorFlow (which only feeds data here) off the GPUs, leaving them to JAX.

  Call it at a program's start, before TensorFlow touches a device.
  """
  tf.config.set_visible_devices([], 'GPU')
