"""torchvision weights converted: the same logits as torchvision on the same images."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')  # the peer library; not installed in every environment
import torchvision  # pylint: disable=wrong-import-position

from inception_jax import cli
from inception_jax.model import googlenet
from inception_jax.serving import convert
from inception_jax.serving import evaluation
from inception_jax.training import rundir
from helpers import convert_cli

TORCH_SIZE = 64  # odd sizes after conv1, so the ceil-mode pools matter
# The float32 agreements docs/serving.md states, on this module's weights and images.
LOGITS_ATOL = 6e-5  # eval logits; the error varies with the random weights' seed
AUX_HEAD_ATOL = 8e-6  # an aux head alone
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


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
  model = googlenet.create_model('googlenet_bn')
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
  model = googlenet.create_model('googlenet_bn', dtype=jnp.float64)
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
  head = googlenet.AuxHead(num_classes=1000, adaptive_pool=True, batch_norm=True,
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
  convert_cli('torchvision', str(weights), str(tmp_path / 'run'))
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


def test_a_pth_that_holds_no_state_dict_is_one_line_through_the_command_line(tmp_path):
  path = tmp_path / 'whole_model.pth'
  torch.save(torch.zeros(3), path)  # as torch.save(model) gives: not a state dict
  with pytest.raises(SystemExit) as error:
    cli.main(['convert', 'torchvision', str(path), str(tmp_path / 'run')])
  assert str(error.value.code) == (
      f'error: {path} holds a Tensor, not a state dict; save one with '
      'torch.save(model.state_dict(), PATH).')
  assert not (tmp_path / 'run').exists()
