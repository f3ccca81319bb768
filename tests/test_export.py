"""The jax.export artifact gives the in-process logits in a process with only jax and flatbuffers.

So does the optional TensorFlow SavedModel, in TensorFlow.
"""

import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow as tf

from inception_jax import cli
from inception_jax import errors
from inception_jax.configs import default
from inception_jax.serving import convert
from inception_jax.serving import evaluation
from inception_jax.serving import export
from inception_jax.training import rundir
from helpers import random_variables

IMAGE_SIZE = 32
CLASSES = tuple(f'class {i}' for i in range(10))
MEAN_RGB = (120.0, 110.0, 100.0)  # unequal per channel, so a channel mix-up shows
STD_RGB = (60.0, 50.0, 40.0)
BATCH_SIZES = (1, 3, 8)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A googlenet_tiny run at 32x32 with random weights."""
  config = default.get_config()
  config.model = 'googlenet_tiny'
  config.model_options.width = None
  config.image_size = IMAGE_SIZE
  config.mean_rgb, config.std_rgb = MEAN_RGB, STD_RGB
  model = rundir.build_model(config, len(CLASSES))
  variables = random_variables(model, IMAGE_SIZE)
  return convert.write_run(tmp_path_factory.mktemp('run'), config, variables, CLASSES)


@pytest.fixture(scope='module')
def loaded(run_dir):
  return evaluation.load_model(run_dir, rundir.load_config(run_dir))


@pytest.fixture(scope='module')
def images():
  """One uint8 batch per size in BATCH_SIZES."""
  rng = np.random.default_rng(1)
  return [rng.integers(0, 256, (b, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
          for b in BATCH_SIZES]


@pytest.fixture(scope='module')
def expected_logits(loaded, images):
  """The checkpoint's logits computed in this process, all batches in one call."""
  normalized = (np.concatenate(images).astype(np.float32) - MEAN_RGB) / STD_RGB
  logits = np.asarray(loaded.model.apply(loaded.variables, normalized, train=False).logits)
  return np.split(logits, np.cumsum(BATCH_SIZES)[:-1])


@pytest.fixture(scope='module')
def uint8_artifact(run_dir, tmp_path_factory):
  """The default (uint8) artifact, written through the command line."""
  path = tmp_path_factory.mktemp('export') / 'model.jax'
  args = cli.build_parser().parse_args(['export', str(run_dir), str(path)])
  args.run(args)
  return path


_LOAD_AND_CALL = textwrap.dedent('''\
    import sys
    sys.path.insert(0, sys.argv[4])  # jax, jaxlib, their dependencies and flatbuffers only
    for absent in ('flax', 'tensorflow', 'inception_jax'):
      try:
        __import__(absent)
      except ImportError:
        continue
      raise SystemExit(f'{absent} is importable: the check is not isolated')
    import jax
    import numpy as np
    exported = jax.export.deserialize(open(sys.argv[1], 'rb').read())
    inputs = np.load(sys.argv[2])
    np.savez(sys.argv[3], **{k: np.asarray(exported.call(inputs[k])) for k in inputs.files})
''')


def consumer_site_packages(directory: pathlib.Path) -> pathlib.Path:
  """A folder of links to what `pip install jax flatbuffers` installs, and nothing else.

  jax and jaxlib with the dependencies their metadata declares (extras left out),
  transitively, plus flatbuffers: what the README tells a consumer to install.
  """
  directory.mkdir()
  wanted, seen = ['jax', 'jaxlib', 'flatbuffers'], set()
  while wanted:
    name = re.split(r'[<>=!~;\[ ]', wanted.pop())[0].lower().replace('_', '-')
    if name in seen:
      continue
    seen.add(name)
    distribution = importlib.metadata.distribution(name)
    wanted.extend(r for r in distribution.requires or () if 'extra ==' not in r)
    for top in {f.parts[0] for f in distribution.files if f.parts[0] != '..'}:
      source = pathlib.Path(distribution.locate_file(top))
      if source.exists() and not (directory / top).exists():
        (directory / top).symlink_to(source)
  return directory


def test_uint8_artifact_gives_in_process_logits_with_only_jax_and_flatbuffers(
    uint8_artifact, images, expected_logits, tmp_path):
  inputs, outputs = tmp_path / 'images.npz', tmp_path / 'logits.npz'
  np.savez(inputs, **{f'b{len(x)}': x for x in images})
  site = consumer_site_packages(tmp_path / 'site')
  # -I -S: no site-packages, no PYTHONPATH, no current directory on sys.path.
  done = subprocess.run([sys.executable, '-I', '-S', '-c', _LOAD_AND_CALL, str(uint8_artifact),
                         str(inputs), str(outputs), str(site)],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  logits = np.load(outputs)
  for x, expected in zip(images, expected_logits):
    got = logits[f'b{len(x)}']
    assert got.shape == (len(x), len(CLASSES)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_sidecar_describes_input_output_and_classes(uint8_artifact):
  info = json.loads(uint8_artifact.with_name('model.jax.json').read_text())
  assert info['input']['dtype'] == 'uint8'
  assert info['input']['shape'] == ['b', IMAGE_SIZE, IMAGE_SIZE, 3]
  assert info['input']['normalization']['mean_rgb'] == list(MEAN_RGB)
  assert info['input']['normalization']['std_rgb'] == list(STD_RGB)
  assert info['input']['normalization']['applied'] == 'inside the artifact'
  assert info['output']['shape'] == ['b', len(CLASSES)]
  assert info['platforms'] == ['cpu', 'cuda', 'tpu']
  assert info['class_names'] == list(CLASSES)


def test_saved_model_gives_in_process_logits(run_dir, images, expected_logits, tmp_path):
  directory = tmp_path / 'saved_model'
  args = cli.build_parser().parse_args(['export', str(run_dir), str(tmp_path / 'model.jax'),
                            '--saved-model', str(directory)])
  try:
    args.run(args)
  except errors.UserError as e:
    # Only where jax writes StableHLO newer than TensorFlow reads (jax >= 0.11 with
    # TensorFlow 2.21): refused, and nothing left that would fail where it is served.
    assert tuple(int(p) for p in jax.__version__.split('.')[:2]) >= (0, 11), e
    assert 'cannot run the StableHLO' in str(e) and not directory.exists()
    pytest.skip(f'refused as it should be: {e}')
  serve = tf.saved_model.load(str(directory))
  for i in (0, 2):
    logits = serve.signatures['serving_default'](images=tf.constant(images[i]))['logits']
    np.testing.assert_allclose(logits.numpy(), expected_logits[i], rtol=0, atol=1e-5)


def test_float_artifact_takes_normalized_images(loaded, images, expected_logits):
  exported = jax.export.deserialize(export.export_model(loaded, 'float').serialize())
  assert exported.in_avals[0].dtype == np.float32
  normalized = (images[1].astype(np.float32) - MEAN_RGB) / STD_RGB
  np.testing.assert_allclose(np.asarray(exported.call(normalized)), expected_logits[1],
                             rtol=0, atol=1e-5)


def test_artifact_refuses_images_of_another_size(uint8_artifact):
  exported = jax.export.deserialize(uint8_artifact.read_bytes())
  wrong = np.zeros((2, IMAGE_SIZE + 8, IMAGE_SIZE + 8, 3), np.uint8)
  with pytest.raises(ValueError, match=rf'expected \(b, {IMAGE_SIZE}, {IMAGE_SIZE}, 3\) and '
                                       rf'called with \(2, {IMAGE_SIZE + 8}, {IMAGE_SIZE + 8}, 3\)'):
    exported.call(wrong)


def test_unknown_input_kind_is_refused(loaded):
  with pytest.raises(ValueError, match="input_kind must be one of \\['float', 'uint8'\\]"):
    export.export_model(loaded, 'int16')
