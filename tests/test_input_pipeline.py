"""Tests of inception_jax.data.pipeline and the embedded sklearn_digits data set.

Everything runs offline on data the tests make: sklearn_digits built into a temporary
data_dir, and small generated image folders. Several JAX processes are simulated through
the `process_index` / `process_count` arguments of the tf.data-level functions.
"""

import collections
import json
import os
import subprocess
import sys
import time

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sklearn_datasets
import tensorflow_datasets as tfds

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax.data import image_folder, pipeline
from inception_jax.data.datasets import sklearn_digits
from helpers import write_png_bomb

IMAGE_SIZE = 16
TENCH, GOLDFISH = 'n01440764', 'n01443537'  # ImageNet synsets as class folder names


def _config(**overrides) -> ml_collections.ConfigDict:
  config = config_lib.get_base_config()
  config.update(dict(image_size=IMAGE_SIZE, batch_size=16, eval_batch_size=64,
                     shuffle_buffer=256, deterministic_data=True), **overrides)
  return config


def _replace(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  copy = config.copy_and_resolve_references()
  copy.update(overrides)
  return copy


def _write_image(path: str, image: Image.Image) -> None:
  image.save(path, 'JPEG' if path.endswith('.jpg') else 'PNG')


def _make_folder(root: str, per_class: dict[str, int]) -> None:
  """Writes root/<split>/<class>/ with RGB, grayscale and CMYK JPEGs, RGB and RGBA PNGs."""
  rng = np.random.default_rng(0)
  modes = [('RGB', 'jpg'), ('L', 'jpg'), ('CMYK', 'jpg'), ('RGB', 'png'), ('RGBA', 'png')]
  for split, count in per_class.items():
    for name in (TENCH, GOLDFISH):
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        mode, extension = modes[i % len(modes)]
        pixels = rng.integers(0, 256, (20 + i, 24 + 2 * i, 3), dtype=np.uint8)
        path = os.path.join(root, split, name, f'{i:02d}.{extension}')
        _write_image(path, Image.fromarray(pixels).convert(mode))


@pytest.fixture(scope='module')
def digits_config(digits_data_dir) -> ml_collections.ConfigDict:
  """sklearn_digits in the session's data_dir."""
  return _config(data_dir=str(digits_data_dir))


@pytest.fixture(scope='module')
def folder_config(tmp_path_factory) -> ml_collections.ConfigDict:
  """A clean image folder: 2 classes x (10 train, 5 test) images of mixed formats."""
  root = str(tmp_path_factory.mktemp('images'))
  _make_folder(root, {'train': 10, 'test': 5})
  return _config(dataset='image_folder', image_folder=root, batch_size=4,
                 eval_batch_size=4)


@pytest.fixture(scope='module')
def bad_folder(tmp_path_factory) -> tuple[str, str, str]:
  """An image folder whose train split also holds a corrupt and an empty file."""
  root = str(tmp_path_factory.mktemp('bad_images'))
  _make_folder(root, {'train': 5, 'test': 2})
  corrupt = os.path.join(root, 'train', TENCH, 'corrupt.jpg')
  with open(corrupt, 'wb') as f:
    f.write(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
  empty = os.path.join(root, 'train', GOLDFISH, 'empty.png')
  open(empty, 'wb').close()
  return root, corrupt, empty


def _examples(batches) -> collections.Counter:
  """The real (unmasked) examples of local batches as a multiset of (label, image)."""
  counter = collections.Counter()
  for batch in batches:
    mask = batch.get('mask', np.ones_like(batch['label']))
    for image, label in zip(batch['image'][mask > 0], batch['label'][mask > 0]):
      counter[int(label), image.tobytes()] += 1
  return counter


def _eval_batches(config) -> list[dict[str, np.ndarray]]:
  return list(pipeline.make_eval_dataset(config).as_numpy_iterator())


def _train_batches(config, count, **kwargs) -> list[dict[str, np.ndarray]]:
  ds = pipeline.make_train_dataset(config, **kwargs).take(count)
  return list(ds.as_numpy_iterator())


def test_sklearn_digits_builds_offline(digits_config):
  info = pipeline.get_dataset_info(digits_config)
  assert info.name == 'sklearn_digits'
  assert info.num_classes == 10
  assert info.class_names == tuple('0123456789')
  assert info.split_sizes == {'train': 1437, 'test': 360}
  builder = tfds.builder('sklearn_digits', data_dir=digits_config.data_dir)
  assert builder.is_prepared()
  test = list(tfds.as_numpy(builder.as_dataset(split='test')))
  images = np.stack([example['image'] for example in test])
  assert images.shape == (360, 8, 8, 1) and images.dtype == np.uint8
  assert images.max() == 255
  assert set(np.bincount([example['label'] for example in test])) <= {35, 36, 37}


def test_sklearn_digits_split_is_fixed_and_stratified():
  labels = sklearn_datasets.load_digits().target
  splits = sklearn_digits.split_indices(labels)
  train, test = splits['train'], splits['test']
  assert (len(train), len(test)) == (1437, 360)
  assert not set(train) & set(test) and len(set(train) | set(test)) == 1797
  np.testing.assert_array_equal(test[:8], [4, 5, 6, 9, 14, 17, 18, 19])
  test_fraction = np.bincount(labels[test]) / np.bincount(labels)
  assert np.abs(test_fraction - 0.2).max() < 0.01


def test_train_batches_have_local_shapes(digits_config):
  batch, = _train_batches(digits_config, 1, process_index=1, process_count=2)
  assert batch['image'].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(10))


@pytest.mark.parametrize('process_count,batch_size', [(2, 64), (3, 63)])
def test_padded_eval_counts_each_example_once(digits_config, process_count, batch_size):
  config = _config(data_dir=digits_config.data_dir, eval_batch_size=batch_size)
  whole = list(pipeline.make_eval_dataset(config, process_count=1,
                                                process_index=0).as_numpy_iterator())
  shares = [list(pipeline.make_eval_dataset(
      config, process_index=index, process_count=process_count).as_numpy_iterator())
            for index in range(process_count)]
  expected_batches = pipeline.num_eval_batches(config, process_count)
  assert [len(share) for share in shares] == [expected_batches] * process_count
  assert sum(batch['mask'].sum() for share in shares for batch in share) == 360
  assert sum((_examples(share) for share in shares), collections.Counter()) == (
      _examples(whole))
  assert all(batch['mask'].dtype == np.float32 for batch in shares[0])


def test_eval_keeps_split_order_without_deterministic_data(digits_config):
  # Ensembles average the members' predictions example by example: the order must hold
  # even where training data may come in any order for speed.
  config = _replace(digits_config, deterministic_data=False, eval_split='train')
  dataset = pipeline.make_eval_dataset(config, process_index=0, process_count=1)
  assert dataset.options().deterministic
  labels = np.concatenate([batch['label'][batch['mask'] > 0]
                           for batch in dataset.as_numpy_iterator()])
  expected = [example['label'] for example in tfds.load(
      'sklearn_digits', split='train', data_dir=config.data_dir).as_numpy_iterator()]
  np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize('source', ['tfds', 'image_folder'])
def test_train_epochs_are_permutations_of_disjoint_shares(digits_config, folder_config,
                                                          source):
  # Without random crops and flips, training images equal evaluation images: the
  # evaluation pipeline, in order and unshuffled, reads the same split for reference.
  config = _replace(digits_config if source == 'tfds' else folder_config,
                    crop='center', random_flip=False, eval_split='train')
  shares = []
  for index in range(2):
    share = _examples(pipeline.make_eval_dataset(
        config, process_index=index, process_count=2).as_numpy_iterator())
    size = sum(share.values())
    first_epoch = pipeline.make_train_dataset(
        config, process_index=index, process_count=2).unbatch().take(size).batch(size)
    assert _examples(first_epoch.as_numpy_iterator()) == share
    shares.append(share)
  assert not set(shares[0]) & set(shares[1])
  whole = _examples(pipeline.make_eval_dataset(
      config, process_index=0, process_count=1).as_numpy_iterator())
  assert shares[0] + shares[1] == whole


@pytest.mark.parametrize('source,resume_step', [('tfds', 88), ('image_folder', 3)])
def test_deterministic_stream_resumes_exactly(digits_config, folder_config, source,
                                              resume_step):
  # The resumed steps cross an epoch boundary: 1437 / 16 = 89.8 and 20 / 4 = 5 steps.
  config = digits_config if source == 'tfds' else folder_config
  for process in ({'process_index': 0, 'process_count': 1},
                  {'process_index': 1, 'process_count': 2}):
    uninterrupted = _train_batches(config, resume_step + 4, **process)
    resumed = _train_batches(config, 4, start_step=resume_step, **process)
    for expected, actual in zip(uninterrupted[resume_step:], resumed, strict=True):
      np.testing.assert_array_equal(expected['label'], actual['label'])
      np.testing.assert_array_equal(expected['image'], actual['image'])


def test_each_epoch_is_shuffled_anew(folder_config):
  config = _replace(folder_config, crop='center', random_flip=False)
  batches = _train_batches(config, 10)  # 20 images in batches of 4: 2 epochs
  first, second = ([image.tobytes() for batch in batches[start:start + 5]
                    for image in batch['image']] for start in (0, 5))
  assert sorted(first) == sorted(second) and first != second


def test_same_seed_same_batches_other_seed_other_batches(digits_config):
  first = _train_batches(digits_config, 2)
  again = _train_batches(digits_config, 2)
  other_seed = _train_batches(_replace(digits_config, seed=1), 2)
  for expected, actual in zip(first, again, strict=True):
    np.testing.assert_array_equal(expected['image'], actual['image'])
  assert not np.array_equal(first[1]['image'], other_seed[1]['image'])


def test_nondeterministic_mode_yields_batches(digits_config):
  config = _replace(digits_config, deterministic_data=False)
  batch, = _train_batches(config, 1)
  assert batch['image'].shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_image_folder_info_has_readable_imagenet_names(folder_config):
  info = pipeline.get_dataset_info(folder_config)
  assert info.name == 'image_folder'
  assert info.class_names == ('tench, Tinca tinca', 'goldfish, Carassius auratus')
  assert info.num_classes == 2
  assert info.split_sizes == {'train': 20, 'test': 10}


def test_image_folder_eval_reads_every_format(folder_config):
  batches = list(pipeline.make_eval_dataset(folder_config, crops=10)
                 .as_numpy_iterator())
  assert len(batches) == 3  # 10 test images in batches of 4: the last one padded
  assert batches[0]['image'].shape == (4, 10, IMAGE_SIZE, IMAGE_SIZE, 3)
  np.testing.assert_array_equal(batches[-1]['mask'], [1, 1, 0, 0])
  labels = np.concatenate([batch['label'][batch['mask'] > 0] for batch in batches])
  np.testing.assert_array_equal(np.bincount(labels), [5, 5])


def test_bad_images_are_skipped_and_logged_by_name(bad_folder, caplog):
  root, corrupt, empty = bad_folder
  config = _config(dataset='image_folder', image_folder=root, batch_size=5,
                   on_bad_image='skip')
  assert image_folder.find_bad_images([corrupt, empty], config.max_image_pixels) == {
      corrupt: 'cannot be read or decoded', empty: 'empty file'}
  with caplog.at_level('WARNING'):
    epoch = _train_batches(config, 2)  # the 10 good images
  assert f'Skipping bad image {corrupt}: cannot be read or decoded' in caplog.text
  assert f'Skipping bad image {empty}: empty file' in caplog.text
  assert 'Skipped 2 of 12 image files' in caplog.text
  examples = _examples(epoch)
  assert len(examples) == 10
  assert collections.Counter(label for label, _ in examples) == {0: 5, 1: 5}


def test_bad_images_fail_at_start_naming_the_files(bad_folder):
  root, corrupt, empty = bad_folder
  config = _config(dataset='image_folder', image_folder=root, on_bad_image='fail')
  with pytest.raises(errors.BadImageError) as error:
    pipeline.make_train_dataset(config)
  assert corrupt in str(error.value) and empty in str(error.value)


BOMB_REASON = ('declares 20000x20000 = 400,000,000 pixels, more than '
               'config.max_image_pixels=89,478,485; not decoded')


@pytest.fixture(scope='module')
def bomb_folder(tmp_path_factory) -> tuple[str, list[str]]:
  """An image folder whose train split also holds two 20000x20000 PNG bombs (~400 KB each)."""
  root = str(tmp_path_factory.mktemp('bombs'))
  _make_folder(root, {'train': 5, 'test': 2})
  bombs = [write_png_bomb(os.path.join(root, 'train', name, 'bomb.png'))
           for name in (TENCH, GOLDFISH)]
  return root, bombs


def test_bombs_are_refused_by_header_and_named_once_with_their_size(bomb_folder, caplog):
  root, bombs = bomb_folder
  config = _config(dataset='image_folder', image_folder=root, batch_size=5)
  with caplog.at_level('WARNING'):
    pipeline.check_splits(config, pipeline.get_dataset_info(config), ['train', 'test'])
    epoch = _train_batches(config, 2)  # the 10 good images
    _eval_batches(_replace(config, eval_split='train'))
  for bomb in bombs:
    assert caplog.text.count(f'Skipping bad image {bomb}: {BOMB_REASON}.') == 1
  assert caplog.text.count('Skipping bad image') == 2
  assert len(_examples(epoch)) == 10


def test_bombs_fail_the_run_with_on_bad_image_fail(bomb_folder):
  root, bombs = bomb_folder
  config = _config(dataset='image_folder', image_folder=root, on_bad_image='fail')
  with pytest.raises(errors.BadImageError) as error:
    pipeline.check_splits(config, pipeline.get_dataset_info(config), ['train'])
  assert all(f'{bomb}: {BOMB_REASON}' in str(error.value) for bomb in bombs)


_PEAK_OF_CHECK = """
import json, sys
from inception_jax.data import image_folder

def peak_mb():
  status = open('/proc/self/status').read()
  return int(status.split('VmHWM:')[1].split()[0]) / 1024

before = peak_mb()
bad = image_folder.find_bad_images(sys.argv[1:], 89_478_485)
print(json.dumps({'bad': sorted(bad), 'growth_mb': peak_mb() - before}))
"""


def test_bomb_check_decodes_nothing_large(bomb_folder):
  """Decoding one bomb as RGB takes 1.2 GB; the check's peak memory must not grow by 1/10 of it."""
  _, bombs = bomb_folder
  done = subprocess.run([sys.executable, '-c', _PEAK_OF_CHECK, *bombs], capture_output=True,
                        text=True, timeout=120, check=True)
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['bad'] == sorted(bombs)
  assert result['growth_mb'] < 120


@pytest.mark.parametrize('name,expected', [
    ('cifar10', 'python -m inception_jax prepare cifar10 --data_dir '),
    ('imagenet2012', 'ILSVRC2012_img_train.tar'),
])
def test_unprepared_dataset_fails_fast_with_instructions(tmp_path, name, expected):
  config = _config(dataset=name, data_dir=str(tmp_path), download=False)
  start = time.monotonic()
  for make in (pipeline.get_dataset_info, pipeline.make_train_dataset):
    with pytest.raises(errors.DatasetNotPreparedError, match=expected):
      make(config)
  assert time.monotonic() - start < 5


def test_manual_dataset_without_its_files_fails_fast(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  (manual_dir / 'notes.txt').write_text('not the ImageNet tars')
  config = _config(dataset='imagenet2012', data_dir=str(tmp_path / 'tfds'),
                   manual_dir=str(manual_dir))
  start = time.monotonic()
  with pytest.raises(errors.DatasetNotPreparedError,
                     match=f"Preparing 'imagenet2012' from {manual_dir} failed"):
    pipeline.get_dataset_info(config)
  assert time.monotonic() - start < 5


def test_unknown_split_is_named(digits_config):
  config = _config(data_dir=digits_config.data_dir, eval_split='validation')
  with pytest.raises(ValueError, match="'validation' is not in 'sklearn_digits'"):
    pipeline.make_eval_dataset(config)


def test_batch_must_split_over_processes(digits_config):
  with pytest.raises(ValueError, match='batch_size=15 is not divisible by the 2 processes'):
    _train_batches(_config(data_dir=digits_config.data_dir, batch_size=15), 1,
                   process_index=0, process_count=2)


def test_iterators_yield_global_arrays_on_a_one_device_mesh(digits_config):
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  batch = next(pipeline.create_train_iterator(digits_config, mesh, start_step=5))
  assert isinstance(batch['image'], jax.Array)
  assert batch['image'].shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
  assert batch['image'].sharding.is_equivalent_to(sharding, 4)
  spec = pipeline.train_batch_spec(digits_config, mesh)
  assert {k: (v.shape, v.dtype, v.sharding) for k, v in spec.items()} == {
      k: (v.shape, v.dtype, v.sharding) for k, v in batch.items()}
  eval_batches = list(pipeline.create_eval_iterator(digits_config, mesh, crops=10))
  assert len(eval_batches) == 6  # ceil(360 / 64)
  assert eval_batches[0]['image'].shape == (64, 10, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert eval_batches[0]['mask'].sharding.is_equivalent_to(sharding, 1)
  assert sum(float(batch['mask'].sum()) for batch in eval_batches) == 360
