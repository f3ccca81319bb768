"""Input pipeline: a data set's per-process share as seeded, sharded global batches.

Images leave as uint8 RGB pixels; the steps normalize them on the device
(`inception_jax.data.pixels`).

Sources (`config.dataset`): a tfds image-classification data set by name
(`tfds_source`), or `'image_folder'`: `config.image_folder/<split>/<class>/<image>`
(`image_folder`). Each JAX process reads a disjoint share of a split, and the shares
cover the split.

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

import dataclasses
import math
import os
from typing import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import tensorflow as tf

from inception_jax import errors
from inception_jax import sharding
from inception_jax.data import image_folder
from inception_jax.data import preprocessing
from inception_jax.data import tfds_source
from inception_jax.sharding import Batch

IMAGE_FOLDER = 'image_folder'
_EPOCH_STREAM = 0  # seed stream of the per-epoch shuffles
_AUGMENT_STREAM = 1  # seed stream of the per-example augmentations
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
    root = image_folder.root(config)
    split_sizes = {split: len(image_folder.list_split(root, split)[0])
                   for split in image_folder.splits(root)}
    class_names = image_folder.class_names(root)
    name = IMAGE_FOLDER
  else:
    builder = tfds_source.prepared_builder(config)
    split_sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    class_names = tfds_source.class_names(builder)
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
      _share(config, split, *_process(None, None))


def create_train_iterator(config: ml_collections.ConfigDict, mesh: Mesh,
                          start_step: int = 0) -> Iterator[Batch]:
  """Endless training batches `{'image': [B, H, W, 3] uint8, 'label': [B] int32}`.

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
  return {'image': jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8,
                                        sharding=split),
          'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=split)}


def create_eval_iterator(config: ml_collections.ConfigDict, mesh: Mesh,
                         crops: int = 1) -> Iterator[Batch]:
  """One pass over `config.eval_split` as masked global batches.

  Yields `{'image', 'label' [B] int32, 'mask' [B] float32}` with B =
  `config.eval_batch_size`; images are uint8 [B, H, W, 3], or [B, crops, H, W, 3] for
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
  ds = ds.map(prepare, num_parallel_calls=_threads())
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
      'image': tf.zeros(preprocess.output_shape, tf.uint8),
      'label': tf.constant(0),
      'mask': tf.constant(0.0),
  }).repeat()
  ds = share.in_order().map(prepare, num_parallel_calls=_threads())
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


def _share(config: ml_collections.ConfigDict, split: str, process_index: int,
           process_count: int) -> tfds_source.TfdsShare | image_folder.FolderShare:
  """The undecoded examples of `split` that process `process_index` reads."""
  if config.dataset == IMAGE_FOLDER:
    return image_folder.share(image_folder.root(config), split, process_index, process_count,
                              config.on_bad_image, config.max_image_pixels)
  return tfds_source.share(config, split, process_index, process_count)


def _split_size(config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples (image files, for folders) in `split`."""
  if config.dataset == IMAGE_FOLDER:
    return len(image_folder.list_split(image_folder.root(config), split)[0])
  return tfds_source.split_size(tfds_source.prepared_builder(config), split)


def _readable_class_names(names: Sequence[str]) -> tuple[str, ...]:
  """Replaces ImageNet synset ids (e.g. 'n01440764') by readable names ('tench, ...')."""
  readable = tfds_source.synset_names()
  if all(name in readable for name in names):
    return tuple(readable[name] for name in names)
  return tuple(names)


def _train_preprocess(config: ml_collections.ConfigDict) -> preprocessing.TrainPreprocess:
  """The training preprocessing that `config` asks for."""
  return preprocessing.TrainPreprocess(
      image_size=config.image_size, crop=config.crop,
      area_range=tuple(config.crop_area_range),
      aspect_range=tuple(config.crop_aspect_range), random_flip=config.random_flip,
      color_distortion=config.color_distortion,
      random_resize_method=config.random_resize_method,
      eval_resize_ratio=config.eval_resize_ratio)


def eval_preprocess(config: ml_collections.ConfigDict,
                     crops: int) -> preprocessing.EvalPreprocess:
  """The evaluation preprocessing that `config` asks for, with `crops` crops."""
  return preprocessing.EvalPreprocess(
      image_size=config.image_size, resize_ratio=config.eval_resize_ratio, crops=crops)


def _seed(seed: int, stream: int, index: tf.Tensor) -> tf.Tensor:
  """A stateless seed [2] for item `index` of random stream `stream` under `seed`."""
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, stream], tf.int64), tf.cast(index, tf.int64))


def _threads() -> int:
  """Threads of the pipeline's own pool, and images its map works on at once.

  Twice the cores this process may use: a thread waiting on a file read or on a full
  buffer leaves its core to another, so every core keeps decoding.
  """
  return 2 * len(os.sched_getaffinity(0))


def _options(deterministic: bool) -> tf.data.Options:
  """tf.data options: deterministic order, or faster parallel map in any order.

  As the TPU input pipelines set them: a thread pool of the pipeline's own
  (`_threads`) and one thread per op, so that parallelism comes from decoding many
  images at once rather than from splitting one image's ops.
  """
  options = tf.data.Options()
  options.deterministic = deterministic
  options.threading.private_threadpool_size = _threads()
  options.threading.max_intra_op_parallelism = 1
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
