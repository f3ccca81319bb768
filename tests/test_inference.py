"""`predict`: known answers on constructed images, bad files skipped, one compile per bucket."""

import json

import numpy as np
from PIL import Image
import pytest

from inception_jax import cli
from inception_jax.configs import default
from inception_jax.data import preprocessing
from inception_jax.model import googlenet
from inception_jax.serving import convert
from inception_jax.serving import inference
from inception_jax.training import metric_logging
from inception_jax.training import rundir
from helpers import random_variables, write_png_bomb

IMAGE_SIZE = 32
CLASSES = ('red', 'blue', 'other')
RGB = {'red': (220, 30, 30), 'blue': (30, 30, 220)}


def write_image(path, colour: str, size=(40, 48)):
  """A solid `colour` image of `size` (height, width); the format follows the suffix."""
  Image.fromarray(np.full((*size, 3), RGB[colour], np.uint8)).save(path)
  return str(path)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """A red and a blue image of different sizes and formats."""
  folder = tmp_path_factory.mktemp('images')
  return {'red': write_image(folder / 'red.png', 'red'),
          'blue': write_image(folder / 'blue.jpg', 'blue', (64, 36))}


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, images):
  """A googlenet_tiny run whose classifier separates red from blue images.

  The backbone is random. The classifier is set from the pooled features f_red
  and f_blue of the two images (preprocessed as predict does): class 'red' scores
  w·(f - m), class 'blue' -w·(f - m), 'other' 0, with w along f_red - f_blue and m
  their midpoint. So red images are 'red' and blue ones 'blue' with a margin.
  """
  config = default.get_config()
  config.model = 'googlenet_tiny'
  config.model_options.width = None
  config.image_size = IMAGE_SIZE
  config.eval_resize_ratio = 1.0
  model = rundir.build_model(config, len(CLASSES))
  variables = random_variables(model, IMAGE_SIZE)
  preprocess = preprocessing.EvalPreprocess(IMAGE_SIZE, resize_ratio=1.0)
  (_, pixels), = inference.preprocessed_batches([images['red'], images['blue']], preprocess, 2)
  inputs = (pixels - np.float32(config.mean_rgb)) / np.float32(config.std_rgb)
  f_red, f_blue = np.asarray(googlenet.extract_features(model, variables, inputs)['pooled'])
  direction = f_red - f_blue
  w = direction * 10 / np.dot(direction, direction)
  bias = -np.dot(w, (f_red + f_blue) / 2)
  classifier = variables['params']['classifier']
  classifier['kernel'] = np.zeros_like(classifier['kernel'])
  classifier['kernel'][:, 0], classifier['kernel'][:, 1] = w, -w
  classifier['bias'] = np.array([bias, -bias, 0], np.float32)
  return convert.write_run(tmp_path_factory.mktemp('run'), config, variables, CLASSES)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """11 good images (6 red, 5 blue), a corrupt JPEG, an empty PNG and a text file."""
  root = tmp_path_factory.mktemp('folder')
  for i in range(11):
    colour = 'red' if i % 2 == 0 else 'blue'
    write_image(root / f'{i:02d}_{colour}.png', colour, (33 + i, 40))
  (root / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not really a JPEG')
  (root / 'empty.png').write_bytes(b'')
  (root / 'notes.txt').write_text('not an image, and not picked from a folder')
  return root


def test_predicts_the_constructed_answers_and_names(run_dir, images):
  predictor = inference.Predictor(run_dir, buckets=(2,))
  predictions, skipped = predictor.predict([images['red'], images['blue']], top_k=2)
  assert not skipped
  assert [p.path for p in predictions] == [images['red'], images['blue']]
  assert [p.names[0] for p in predictions] == ['red', 'blue']
  assert [p.classes[0] for p in predictions] == [0, 1]
  for p in predictions:
    assert len(p.names) == 2 and p.probabilities[0] > 0.99 > p.probabilities[1]


def test_ten_crops_give_the_same_answers(run_dir, images):
  predictor = inference.Predictor(run_dir, crops=10, buckets=(2,))
  predictions, _ = predictor.predict([images['red'], images['blue']], top_k=1)
  assert [p.names for p in predictions] == [('red',), ('blue',)]


def test_skips_bad_files_by_name_and_compiles_once_per_bucket(run_dir, folder):
  predictor = inference.Predictor(run_dir, buckets=(1, 8))
  missing = str(folder / 'missing.png')
  paths = inference.expand_paths([str(folder), missing])
  assert str(folder / 'notes.txt') not in paths

  predictions, skipped = predictor.predict(paths)
  assert len(predictions) == 11
  assert all(p.names[0] == p.path.rsplit('_', 1)[1].removesuffix('.png') for p in predictions)
  assert skipped == {str(folder / 'corrupt.jpg'): 'cannot be decoded as a JPEG, PNG, GIF or '
                     'BMP image', str(folder / 'empty.png'): 'empty file', missing: 'no such file'}
  assert predictor.num_compilations == 1  # 8 + 3 padded to 8

  predictor.predict(paths[:1])
  predictor.predict(paths)
  assert predictor.num_compilations == 2  # buckets 8 and 1, whatever comes after


def test_skips_a_bomb_unread_naming_its_declared_size(run_dir, images, tmp_path):
  bomb = write_png_bomb(tmp_path / 'bomb.png', 20000)
  predictor = inference.Predictor(run_dir, buckets=(2,))
  predictions, skipped = predictor.predict([images['red'], bomb, images['blue']], top_k=1)
  assert [p.names for p in predictions] == [('red',), ('blue',)]
  assert skipped == {bomb: 'declares 20000x20000 = 400,000,000 pixels, more than '
                           'config.max_image_pixels=89,478,485; not decoded'}


def test_bucket_size():
  assert [inference.bucket_size(n, (1, 8, 32)) for n in (1, 2, 8, 9, 32, 33)] == [
      1, 8, 8, 32, 32, 32]


def test_command_line_prints_and_writes_json(run_dir, images, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(metric_logging, 'PROGRESS_EVERY_S', 0.0)  # a progress line per batch
  out = tmp_path / 'predictions.json'
  args = cli.build_parser().parse_args([
      'predict', str(run_dir), images['blue'], images['red'], images['blue'],
      str(tmp_path / 'gone.jpg'), '--top-k', '2', '--buckets', '2', '--json', str(out)])
  args.run(args)
  captured = capsys.readouterr()
  progress = [line.split(' | ')[0] for line in captured.err.splitlines()
              if line.startswith('classifying: ')]
  assert progress == ['classifying: 2/3 images', 'classifying: 3/3 images']  # batches of 2
  assert captured.out.startswith(f"{images['blue']}: blue ")
  assert f"skipped {tmp_path / 'gone.jpg'}: no such file" in captured.err
  report = json.loads(out.read_text())
  assert report['predictions'][0]['names'][0] == 'blue'
  assert report['skipped'] == {str(tmp_path / 'gone.jpg'): 'no such file'}
