"""torchvision and Caffe weights: same logits as torchvision, every Caffe blob in its place."""

import argparse
import copy
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import torch
import torch.nn.functional as F
import torchvision

from inception_jax import caffe_pb2
from inception_jax import convert
from inception_jax import evaluation
from inception_jax import inference
from inception_jax import models
from inception_jax import rundir

TORCH_SIZE = 64  # odd sizes after conv1, so the ceil-mode pools matter
# The float32 agreements the README states, on this module's weights and images.
LOGITS_ATOL = 6e-5  # eval logits; the error varies with the random weights' seed
AUX_HEAD_ATOL = 8e-6  # an aux head alone
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _convert_cli(*argv: str) -> None:
  parser = argparse.ArgumentParser()
  convert.add_command(parser.add_subparsers())
  args = parser.parse_args(['convert', *argv])
  args.run(args)


# torchvision -------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def raw_images():
  """Two random RGB images on 0..1, NCHW."""
  return random_images(2, seed=0)


def random_images(count: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      0, 1, (count, 3, TORCH_SIZE, TORCH_SIZE)).astype(np.float32)


def torchvision_normalized(images: np.ndarray) -> torch.Tensor:
  """NCHW images on 0..1 normalized as torchvision's preprocessing does."""
  return torch.from_numpy((images - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None])


@pytest.fixture(scope='module')
def torch_input(raw_images):
  return torchvision_normalized(raw_images)


@pytest.fixture(scope='module')
def torch_model():
  """A torchvision GoogLeNet with random weights and random, but sane, BN statistics.

  BN scales and offsets are random. The running statistics are set to those of one
  training batch of 16 other random images (momentum 1), so that activations keep
  their scale through the 22 layers, then perturbed; a mix-up of mean/var/scale/bias
  would show.
  """
  torch.manual_seed(0)
  model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
  batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  model.train()
  with torch.no_grad():
    for bn in batch_norms:
      bn.momentum = 1.0
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_(0, 0.2)
    model(torchvision_normalized(random_images(16, seed=1)))
    for bn in batch_norms:
      bn.running_mean += 0.1 * bn.running_var.sqrt() * torch.randn_like(bn.running_mean)
      bn.running_var *= torch.empty_like(bn.running_var).uniform_(0.8, 1.25)
    for fc in (model.fc, model.aux1.fc2, model.aux2.fc2):
      fc.weight.normal_(0, fc.in_features ** -0.5)
      fc.bias.normal_(0, 0.1)
  return model.eval()


@pytest.fixture(scope='module')
def torch_outputs(torch_model, torch_input):
  """Logits with and without transform_input, and inception 4a/4d outputs with aux logits."""
  features = {}

  def keep_first_output(name):
    def hook(module, inputs, output):
      del module, inputs
      features.setdefault(name, output)
    return hook

  hooks = [getattr(torch_model, name).register_forward_hook(keep_first_output(name))
           for name in ('inception4a', 'inception4d')]
  with torch.no_grad():
    logits = torch_model(torch_input).numpy()
    torch_model.transform_input = True
    transformed_logits = torch_model(torch_input).numpy()
    torch_model.transform_input = False
    aux = [head(features[name]).numpy() for head, name in (
        (torch_model.aux1, 'inception4a'), (torch_model.aux2, 'inception4d'))]
  for hook in hooks:
    hook.remove()
  return {'logits': logits, 'transformed_logits': transformed_logits, 'aux': aux,
          'features': [features[name].numpy() for name in ('inception4a', 'inception4d')]}


@pytest.fixture(scope='module')
def converted(torch_model):
  return convert.convert_torchvision(torch_model.state_dict())


@pytest.fixture(scope='module')
def flax_forward(converted):
  """googlenet_bn with the converted weights: (logits, {stage: output}), eval mode, jitted."""
  model = models.create_model('googlenet_bn')
  return jax.jit(lambda x: model.apply(converted, x, train=False, mutable=['intermediates']))


def test_torchvision_logits_match(raw_images, torch_outputs, flax_forward):
  """Same float32 logits for torchvision's ImageNet-normalized input, transform_input off and on.

  With transform_input on (torchvision's pretrained weights), the converted model is
  fed the images normalized with `torchvision_mean_std(True)` instead.
  """
  pixels = raw_images.transpose(0, 2, 3, 1) * 255
  for transform_input, expected in ((False, torch_outputs['logits']),
                                    (True, torch_outputs['transformed_logits'])):
    mean, std = convert.torchvision_mean_std(transform_input)
    output, _ = flax_forward((pixels - np.array(mean)) / np.array(std))
    assert np.abs(expected).max() > 1  # logits of a useful size, not all ~0
    np.testing.assert_allclose(np.asarray(output.logits), expected, rtol=0, atol=LOGITS_ATOL)


@pytest.fixture
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


def test_torchvision_logits_match_exactly_in_float64(torch_model, torch_input, converted, x64):
  """In float64 both agree to the float32 rounding of the model's output logits.

  Jitted: op by op, float64 GoogLeNet took four times as long.
  """
  del x64
  with torch.no_grad():
    expected = copy.deepcopy(torch_model).double()(torch_input.double()).numpy()
  model = models.create_model('googlenet_bn', dtype=jnp.float64)
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), converted)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
  logits = forward(variables, torch_input.double().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=2e-6)


def test_torchvision_aux_heads_match(raw_images, torch_outputs, converted, flax_forward):
  """The aux heads, each applied alone to the inception 4a/4d features, agree.

  Both frameworks compute the aux heads only in training mode, where BatchNorm
  normalizes by batch statistics (so the converted running statistics would go
  untested) and dropout is random. So each head is applied on its own in evaluation
  mode (running statistics, no dropout) to its input: the converted features (the
  Flax model's sown 4a/4d outputs, checked against torchvision's here) for Flax and
  torchvision's own features for torchvision. Those logits carry the features'
  float32 differences, so they are held to the logits' bound; the Flax head fed
  torchvision's own features is held to the heads' bound.
  """
  pixels = raw_images.transpose(0, 2, 3, 1) * 255
  mean, std = convert.torchvision_mean_std(False)
  _, state = flax_forward((pixels - np.array(mean)) / np.array(std))
  head = models.AuxHead(num_classes=1000, adaptive_pool=True, batch_norm=True,
                        init_scheme='torchvision')
  for i, stage in enumerate(('inception_4a', 'inception_4d')):
    features = state['intermediates'][f'{stage}_output'][0]
    np.testing.assert_allclose(np.asarray(features),
                               torch_outputs['features'][i].transpose(0, 2, 3, 1),
                               rtol=0, atol=1e-4)
    name = f'aux{i + 1}'
    variables = {'params': converted['params'][name],
                 'batch_stats': converted['batch_stats'][name]}
    logits = head.apply(variables, features, train=False)
    assert np.abs(torch_outputs['aux'][i]).max() > 0.5
    np.testing.assert_allclose(np.asarray(logits), torch_outputs['aux'][i], rtol=0,
                               atol=LOGITS_ATOL)
    logits = head.apply(variables, torch_outputs['features'][i].transpose(0, 2, 3, 1),
                        train=False)
    np.testing.assert_allclose(np.asarray(logits), torch_outputs['aux'][i], rtol=0,
                               atol=AUX_HEAD_ATOL)


def test_torchvision_command_writes_a_loadable_run(torch_model, converted, tmp_path):
  weights = tmp_path / 'googlenet.pth'
  torch.save(torch_model.state_dict(), weights)
  _convert_cli('torchvision', str(weights), str(tmp_path / 'run'))
  config = rundir.load_config(tmp_path / 'run')
  assert config.model == 'googlenet_bn'
  assert tuple(config.mean_rgb) == tuple(config.std_rgb) == (127.5,) * 3
  loaded = evaluation.load_model(tmp_path / 'run', config)
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, converted)
  meta = loaded.meta
  assert meta['num_classes'] == 1000 and meta['class_names'][0].startswith('tench')


def test_torchvision_without_aux_heads_turns_them_off(torch_model, tmp_path):
  state_dict = {k: v for k, v in torch_model.state_dict().items() if not k.startswith('aux')}
  variables = convert.convert_torchvision(state_dict)
  assert 'aux1' not in variables['params']
  config = convert.converted_config('imagenet_bn', variables,
                                    convert.torchvision_mean_std(False))
  assert config.model_options.aux_heads is False
  convert.check_fits(rundir.build_model(config, 1000), variables, 224)


def test_torchvision_state_dict_errors_name_the_keys(torch_model):
  state_dict = dict(torch_model.state_dict())
  del state_dict['inception4b.branch3.1.conv.weight']
  state_dict['head.weight'] = torch.zeros(3)
  with pytest.raises(ValueError, match=r"missing keys \['inception4b.branch3.1.conv.weight'\]; "
                     r"unexpected keys \['head.weight'\]"):
    convert.convert_torchvision(state_dict)


# Caffe -------------------------------------------------------------------------------------


def bvlc_weight_shapes() -> dict[str, tuple[int, ...]]:
  """Weight blob shapes of bvlc_googlenet's layers, by layer name: OIHW or (out, in).

  Written from the train_val.prototxt's layer names and Table 1's widths.
  """
  shapes = {'conv1/7x7_s2': (64, 3, 7, 7), 'conv2/3x3_reduce': (64, 64, 1, 1),
            'conv2/3x3': (192, 64, 3, 3)}
  channels = 192
  for block, (n1, r3, n3, r5, n5, proj) in models.INCEPTION_WIDTHS.items():
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


def test_caffe_convolutions_compute_what_caffe_does(caffe_blobs, caffe_converted):
  """Each conv with converted weights (NHWC, lax) equals torch's conv2d with Caffe's OIHW.

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
    expected[name] = F.conv2d(torch.from_numpy(caffe_input.transpose(0, 3, 1, 2).copy()),
                              torch.from_numpy(weight), torch.from_numpy(bias),
                              padding=weight.shape[-1] // 2).numpy().transpose(0, 2, 3, 1)

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
  _convert_cli('caffe', str(model_file), str(tmp_path / 'run'))
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
  model = models.create_model('googlenet')
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))['params']
  for caffe_name, path in {**convs, **denses}.items():
    node = params
    for key in path.split('/'):
      node = node[key]
    kernel = (node['conv'] if 'conv' in node else node)['kernel']
    assert kernel.shape[-1] == layers[caffe_name][1], caffe_name
