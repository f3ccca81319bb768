"""Caffe weights converted: every bvlc_googlenet blob in its place, computing what Caffe does."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from inception_jax.model import googlenet
from inception_jax.serving import caffe_pb2
from inception_jax.serving import convert
from inception_jax.serving import inference
from helpers import convert_cli


def bvlc_weight_shapes() -> dict[str, tuple[int, ...]]:
  """Weight blob shapes of bvlc_googlenet's layers, by layer name: OIHW or (out, in).

  Written from the train_val.prototxt's layer names and Table 1's widths.
  """
  shapes = {'conv1/7x7_s2': (64, 3, 7, 7), 'conv2/3x3_reduce': (64, 64, 1, 1),
            'conv2/3x3': (192, 64, 3, 3)}
  channels = 192
  for block, (n1, r3, n3, r5, n5, proj) in googlenet.INCEPTION_WIDTHS.items():
    shapes.update({f'inception_{block}/1x1': (n1, channels, 1, 1),
                   f'inception_{block}/3x3_reduce': (r3, channels, 1, 1),
                   f'inception_{block}/3x3': (n3, r3, 3, 3),
                   f'inception_{block}/5x5_reduce': (r5, channels, 1, 1),
                   f'inception_{block}/5x5': (n5, r5, 5, 5),
                   f'inception_{block}/pool_proj': (proj, channels, 1, 1)})
    channels = n1 + n3 + n5 + proj
    if block in ('4a', '4d'):
      loss = 'loss1' if block == '4a' else 'loss2'
      shapes.update({f'{loss}/conv': (128, channels, 1, 1), f'{loss}/fc': (1024, 2048),
                     f'{loss}/classifier': (1000, 1024)})
  shapes['loss3/classifier'] = (1000, 1024)
  return shapes


@pytest.fixture(scope='module')
def caffe_blobs():
  """Random (weight, bias) per bvlc_googlenet layer, scaled to keep outputs near 1."""
  rng = np.random.default_rng(0)
  return {name: (rng.normal(0, np.prod(shape[1:]) ** -0.5, shape).astype(np.float32),
                 rng.normal(0, 0.1, shape[0]).astype(np.float32))
          for name, shape in bvlc_weight_shapes().items()}


def _packed_floats(array: np.ndarray) -> bytes:
  """BlobProto's `data` (field 5, packed float32) on the wire, as Caffe writes it.

  Merged into a blob, it fills `data` about ten times faster than a list would.
  """
  payload = np.ascontiguousarray(array, '<f4').tobytes()
  size, length = len(payload), bytearray()
  while size > 0x7f:  # the payload's length as a varint
    length.append(size & 0x7f | 0x80)
    size >>= 7
  length.append(size)
  return bytes([5 << 3 | 2]) + bytes(length) + payload


def caffemodel(blobs, legacy: bool = False) -> bytes:
  """A NetParameter with `blobs`, plus weightless layers, as Caffe writes one.

  `legacy`: the V1 format (`layers`, enum types, 4-D num/channels/height/width blobs).
  """
  net = caffe_pb2.NetParameter(name='GoogleNet')
  for name, arrays in blobs.items():
    if legacy:
      kind = caffe_pb2.V1_INNER_PRODUCT if arrays[0].ndim == 2 else caffe_pb2.V1_CONVOLUTION
      layer = net.layers.add(name=name, type=kind)
    else:
      layer = net.layer.add(name=name,
                            type='InnerProduct' if arrays[0].ndim == 2 else 'Convolution')
    for array in arrays:
      blob = layer.blobs.add()
      if legacy:
        blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
      else:
        blob.shape.dim.extend(array.shape)
      blob.MergeFromString(_packed_floats(array))
    if not legacy:
      net.layer.add(name=name.replace('/', '/relu_'), type='ReLU')
  return net.SerializeToString()


@pytest.fixture(scope='module')
def caffemodel_bytes(caffe_blobs):
  """The caffemodel of `caffe_blobs` (53 MB), built once for the module."""
  return caffemodel(caffe_blobs)


@pytest.fixture(scope='module')
def caffe_converted(caffemodel_bytes):
  return convert.convert_caffe(caffemodel_bytes)


def _flax_path(params, path: str):
  for key in path.split('/'):
    params = params[key]
  return params


def _caffe_convolution(images: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """Caffe's convolution layer in float64: NCHW images, OIHW weight, stride 1, 'same' zeros.

  Written out as a sum over the kernel's offsets, a cross-correlation as Caffe computes it.
  """
  size = weight.shape[-1]
  pad = size // 2
  padded = np.pad(images.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  height, width = images.shape[2:]
  out = np.zeros((images.shape[0], weight.shape[0], height, width)) + bias[:, None, None]
  for dy in range(size):
    for dx in range(size):
      out += np.einsum('nchw,oc->nohw', padded[:, :, dy:dy + height, dx:dx + width],
                       weight[:, :, dy, dx].astype(np.float64))
  return out


def test_caffe_convolutions_compute_what_caffe_does(caffe_blobs, caffe_converted):
  """Each conv with converted weights (NHWC, lax) equals Caffe's convolution with its OIHW.

  conv1 gets the RGB image here and the BGR image in Caffe. All convolutions run in
  one jitted call: one compilation, not one per convolution shape.
  """
  convs, _ = convert._caffe_layers(aux_heads=True)  # pylint: disable=protected-access
  rng = np.random.default_rng(1)
  inputs, expected = {}, {}
  for name in convs:
    weight, bias = caffe_blobs[name]
    inputs[name] = x = rng.normal(size=(2, 9, 9, weight.shape[1])).astype(np.float32)
    caffe_input = x[..., ::-1] if name == 'conv1/7x7_s2' else x
    expected[name] = _caffe_convolution(caffe_input.transpose(0, 3, 1, 2), weight,
                                        bias).transpose(0, 2, 3, 1)

  @jax.jit
  def flax_convs(inputs, layers):
    outputs = {}
    for name, x in inputs.items():
      kernel, pad = layers[name]['kernel'], layers[name]['kernel'].shape[0] // 2
      outputs[name] = layers[name]['bias'] + jax.lax.conv_general_dilated(
          x, kernel, (1, 1), [(pad, pad)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return outputs

  got = flax_convs(inputs, {name: _flax_path(caffe_converted['params'], path)['conv']
                            for name, path in convs.items()})
  worst = max(float(np.abs(np.asarray(got[name]) - expected[name]).max()) for name in convs)
  assert worst < 1e-5


def test_caffe_inner_products_compute_what_caffe_does(caffe_blobs, caffe_converted):
  """x @ kernel + bias on NHWC-flattened input equals Caffe's W x + b on CHW-flattened input."""
  _, denses = convert._caffe_layers(aux_heads=True)  # pylint: disable=protected-access
  rng = np.random.default_rng(2)
  for name, path in denses.items():
    weight, bias = caffe_blobs[name]
    if name.endswith('/fc'):
      x = rng.normal(size=(2, 4, 4, 128)).astype(np.float32)  # the aux conv's output
      caffe_x = x.transpose(0, 3, 1, 2).reshape(2, -1)
      x = x.reshape(2, -1)
    else:
      x = caffe_x = rng.normal(size=(2, weight.shape[1])).astype(np.float32)
    layer = _flax_path(caffe_converted['params'], path)
    np.testing.assert_allclose(x @ layer['kernel'] + layer['bias'],
                               caffe_x @ weight.T + bias, rtol=0, atol=1e-5)


def test_legacy_v1_caffemodel_converts_the_same(caffe_blobs, caffe_converted):
  legacy = convert.convert_caffe(caffemodel(caffe_blobs, legacy=True))
  jax.tree.map(np.testing.assert_array_equal, legacy, caffe_converted)


def test_caffe_errors_name_the_layers(caffe_blobs):
  blobs = {k: v for k, v in caffe_blobs.items() if k != 'inception_5b/pool_proj'}
  with pytest.raises(ValueError, match=r"missing layers with weights \['inception_5b/pool_proj'\]"):
    convert.convert_caffe(caffemodel(blobs))
  with pytest.raises(ValueError, match='not a Caffe NetParameter'):
    convert.convert_caffe(b'\x0b\xad')


def test_caffe_command_writes_a_run_that_predicts(caffemodel_bytes, caffe_converted, tmp_path):
  model_file = tmp_path / 'bvlc_googlenet.caffemodel'
  model_file.write_bytes(caffemodel_bytes)
  convert_cli('caffe', str(model_file), str(tmp_path / 'run'))
  config = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert config['model'] == 'googlenet'
  assert config['mean_rgb'] == [123.0, 117.0, 104.0] and config['std_rgb'] == [1.0, 1.0, 1.0]
  image = tmp_path / 'image.png'
  Image.fromarray(np.random.default_rng(3).integers(0, 256, (256, 300, 3), np.uint8)).save(image)
  predictor = inference.Predictor(tmp_path / 'run', buckets=(1,))
  jax.tree.map(np.testing.assert_array_equal, predictor.loaded.variables, caffe_converted)
  (prediction,), skipped = predictor.predict([str(image)])
  assert not skipped and len(prediction.names) == 5
  assert np.isfinite(prediction.probabilities).all()
  assert predictor.class_names[0].startswith('tench')


def _prototxt_layers() -> dict[str, tuple[str, int]]:
  """Layer name -> (type, num_output) of the weighted layers in BVLC's train_val.prototxt."""
  text = (pathlib.Path(__file__).parent / 'data' / 'bvlc_googlenet_train_val.prototxt').read_text()
  layers = {}
  for block in re.findall(r'layer \{(.*?)\n\}', text, flags=re.S):
    kind = re.search(r'type: "(\w+)"', block).group(1)
    if kind in ('Convolution', 'InnerProduct'):
      name = re.search(r'name: "([^"]+)"', block).group(1)
      layers[name] = (kind, int(re.search(r'num_output: (\d+)', block).group(1)))
  return layers


def test_caffe_layer_map_covers_bvlc_googlenet_exactly():
  convs, denses = convert._caffe_layers(aux_heads=True)  # pylint: disable=protected-access
  layers = _prototxt_layers()
  assert {n for n, (k, _) in layers.items() if k == 'Convolution'} == set(convs)
  assert {n for n, (k, _) in layers.items() if k == 'InnerProduct'} == set(denses)
  model = googlenet.create_model('googlenet')
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))['params']
  for caffe_name, path in {**convs, **denses}.items():
    node = params
    for key in path.split('/'):
      node = node[key]
    kernel = (node['conv'] if 'conv' in node else node)['kernel']
    assert kernel.shape[-1] == layers[caffe_name][1], caffe_name
