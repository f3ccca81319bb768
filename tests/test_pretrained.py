"""`inception_jax.pretrained(...)`: official weights (from a local HTTP server), files and runs.

The torchvision case is checked against torchvision itself: the same state dict, the
same uint8 images, torchvision's own preprocessing (ImageNet mean/std, then its
`transform_input`) against the preprocessing `pretrained` hands back.
"""

import argparse
import hashlib
import io
import json
import sys

import jax
import numpy as np
import pytest

import inception_jax
from inception_jax import errors
from inception_jax.serving import convert
from inception_jax.serving import weights
from test_convert_caffe import caffe_blobs, caffemodel  # noqa: F401  pylint: disable=unused-import
from test_weights import cache, official, serve, server  # noqa: F401  pylint: disable=unused-import

SIZE = 64  # small images: the comparison does not need 224


@pytest.fixture(scope='module')
def torchvision_googlenet():
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  torch.manual_seed(0)
  model = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True,
                                       init_weights=False)
  buffer = io.BytesIO()
  torch.save(model.state_dict(), buffer)
  return model.eval(), buffer.getvalue()


def test_torchvision_weights_compute_what_torchvision_does(torchvision_googlenet, server, cache,
                                                           monkeypatch):
  torch = pytest.importorskip('torch')
  model, data = torchvision_googlenet
  filename = f'googlenet-{hashlib.sha256(data).hexdigest()[:8]}.pth'
  server.files[filename] = data
  official(monkeypatch, 'torchvision', server.url(filename),
           weights.sha256_prefix_in_name(server.url(filename)))
  net = inception_jax.pretrained('torchvision')
  assert (net.preprocessing.image_size, net.preprocessing.resize_side) == (224, 256)
  assert len(net.class_names) == 1000 and net.class_names[0].startswith('tench')
  images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), np.uint8)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  torch_input = torch.from_numpy(((images / 255 - mean) / std).transpose(0, 3, 1, 2)).float()
  with torch.no_grad():
    expected = model(torch_input).numpy()
  logits = np.asarray(net.model.apply(net.variables, net.preprocessing.normalize(images),
                                      train=False).logits)
  np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())
  inception_jax.pretrained('torchvision')  # cached: nothing downloads again
  assert len(server.requests) == 1


def test_caffe_weights_come_with_caffes_mean_and_its_classes(caffe_blobs, server, cache,
                                                             monkeypatch):
  data = caffemodel(caffe_blobs)
  serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', data)
  net = inception_jax.pretrained('caffe')
  assert net.config.model == 'googlenet'
  # Caffe subtracts (104, 117, 123) from BGR pixels on 0..255 and does not scale them.
  pixel = np.array([[200, 100, 50]], np.uint8)
  np.testing.assert_array_equal(net.preprocessing.normalize(pixel), [[200 - 123, 100 - 117,
                                                                      50 - 104]])
  conv1 = caffe_blobs['conv1/7x7_s2'][0]  # OIHW, input channels BGR
  np.testing.assert_array_equal(net.variables['params']['conv1']['conv']['kernel'],
                                conv1.transpose(2, 3, 1, 0)[:, :, ::-1, :])


def test_a_run_directory_and_a_weights_file(torchvision_googlenet, tmp_path, capsys):
  _, data = torchvision_googlenet
  (tmp_path / 'tv.pth').write_bytes(data)
  from_file = inception_jax.pretrained(tmp_path / 'tv.pth')
  convert.torchvision_command(argparse.Namespace(
      weights=str(tmp_path / 'tv.pth'), out=str(tmp_path / 'run'), transform_input=True))
  capsys.readouterr()
  from_run = inception_jax.pretrained(str(tmp_path / 'run'))
  assert from_run.class_names == from_file.class_names
  assert from_run.preprocessing == from_file.preprocessing
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['model'] == 'googlenet_bn'
  jax.tree.map(np.testing.assert_array_equal, dict(from_run.variables), from_file.variables)


def test_an_unknown_name_is_one_line_naming_the_choices(tmp_path):
  with pytest.raises(errors.NotFoundError) as error:
    inception_jax.pretrained('torchvison')
  assert '\n' not in str(error.value) and 'torchvision, caffe' in str(error.value)


def test_torch_missing_says_what_to_install(tmp_path, monkeypatch):
  (tmp_path / 'w.pth').write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails
  with pytest.raises(errors.UserError) as error:
    convert.from_torchvision_file(tmp_path / 'w.pth')
  assert '\n' not in str(error.value)
  assert "pip install 'inception_jax[torch]'" in str(error.value)
