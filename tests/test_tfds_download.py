"""tfds data sets that are not prepared: downloaded by a single process, refused by several.

Offline: `TinyDownload`, a tfds builder defined here, downloads one .npz file through
`dl_manager.download` from a local HTTP server (`test_weights.FileServer`).
"""

import io
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from inception_jax import cli
from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax.data import tfds_source
from test_weights import FileServer

IMAGES = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), np.uint8)
LABELS = np.array([0, 1, 1, 0, 1])


class TinyDownload(tfds.core.GeneratorBasedBuilder):
  """Five 6x6 images in two classes, in a file that must be downloaded."""
  VERSION = tfds.core.Version('1.0.0')
  pkg_dir_path = pathlib.Path(__file__).parent  # tfds looks for metadata files beside a package's
  url = ''  # the local server's, set by the tests

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(6, 6, 3)),
            'label': tfds.features.ClassLabel(names=['a', 'b'])}),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    path = dl_manager.download(self.url)
    return {'train': self._generate_examples(path, slice(0, 3)),
            'test': self._generate_examples(path, slice(3, 5))}

  def _generate_examples(self, path, rows):
    with open(path, 'rb') as f:
      data = np.load(io.BytesIO(f.read()))
    for i in range(len(data['labels']))[rows]:
      yield i, {'image': data['images'][i], 'label': int(data['labels'][i])}


@pytest.fixture
def server(monkeypatch):
  files = FileServer()
  buffer = io.BytesIO()
  np.savez(buffer, images=IMAGES, labels=LABELS)
  files.files['tiny.npz'] = buffer.getvalue()
  monkeypatch.setattr(TinyDownload, 'url', files.url('tiny.npz'))
  yield files
  files.close()


def tiny_config(data_dir, **fields) -> ml_collections.ConfigDict:
  config = config_lib.get_base_config()
  config.dataset, config.data_dir = 'tiny_download', str(data_dir)
  config.update(fields)
  return config


def test_a_single_process_downloads_and_prepares_it_in_one_line(server, tmp_path, capsys):
  builder = tfds_source.prepared_builder(tiny_config(tmp_path))
  assert server.requests == ['/tiny.npz']
  out = capsys.readouterr().out
  assert out.startswith(f"downloading and preparing 'tiny_download' into {tmp_path}")
  assert out.count('\n') == 1 and ' done in ' in out  # tfds's own lines stay quiet
  assert tfds_source.split_size(builder, 'train') == 3
  images = [example['image'] for example in tfds.as_numpy(builder.as_dataset(split='test'))]
  np.testing.assert_array_equal(sorted(i.sum() for i in images),
                                sorted(i.sum() for i in IMAGES[3:]))
  tfds_source.prepared_builder(tiny_config(tmp_path))  # prepared: nothing downloads again
  assert server.requests == ['/tiny.npz']


@pytest.mark.parametrize('why, fields, processes', [
    ('config.download is False', {'download': False}, 1),
    ('a run of several processes does not download', {}, 2)])
def test_no_download_refuses_with_the_command_that_prepares_it(server, tmp_path, monkeypatch,
                                                               why, fields, processes):
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  with pytest.raises(errors.DatasetNotPreparedError) as error:
    tfds_source.prepared_builder(tiny_config(tmp_path, **fields))
  message = str(error.value)
  assert '\n' not in message and why in message
  assert message.endswith(f'python -m inception_jax prepare tiny_download --data_dir {tmp_path}')
  assert server.requests == []


def test_prepare_command_prepares_it_once(server, tmp_path, capsys):
  cli.main(['prepare', 'tiny_download', '--data_dir', str(tmp_path)])
  cli.main(['prepare', 'tiny_download', '--data_dir', str(tmp_path)])
  assert server.requests == ['/tiny.npz']
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3 and lines[0].endswith(' s')
  assert lines[1] == lines[2] == (f"'tiny_download' is prepared in {tmp_path}/tiny_download/"
                                  '1.0.0: train 3, test 2')


def test_a_failed_download_is_one_line_with_the_command(server, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(TinyDownload, 'url', server.url('gone.npz'))  # HTTP 404
  with pytest.raises(errors.DatasetNotPreparedError) as error:
    tfds_source.prepared_builder(tiny_config(tmp_path))
  message = str(error.value)
  assert message.startswith("downloading 'tiny_download' failed (") and '\n' not in message
  assert message.endswith(f'python -m inception_jax prepare tiny_download --data_dir {tmp_path}')
  assert capsys.readouterr().out.endswith(' failed\n')
