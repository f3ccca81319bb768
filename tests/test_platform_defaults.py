"""Choices made from the platform: the kernel set, the compute dtype, the XLA options."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import compilation_cache
from inception_jax import config as config_lib
from inception_jax import sharding
from inception_jax import xla_options
from inception_jax.model import googlenet
from inception_jax.model import ops
from inception_jax.training import steps


@pytest.mark.parametrize('choice, platform, expected', [
    ('auto', 'cpu', 'fast'), ('auto', 'gpu', 'xla'), ('auto', 'tpu', 'xla'),
    ('fast', 'tpu', 'fast'), ('xla', 'cpu', 'xla'),
])
def test_kernel_set(choice, platform, expected):
  assert ops.resolve(choice, platform) == expected


def test_unknown_kernel_set():
  with pytest.raises(ValueError, match="unknown ops 'faster'"):
    ops.resolve('faster', 'cpu')


def test_the_model_default_is_auto_and_follows_the_backend():
  assert googlenet.create_model('googlenet_tiny').ops == 'auto'
  assert ops.resolve('auto') == ('fast' if jax.default_backend() == 'cpu' else 'xla')


@pytest.mark.parametrize('choice, platform, expected', [
    ('auto', 'cpu', 'float32'), ('auto', 'gpu', 'bfloat16'), ('auto', 'tpu', 'bfloat16'),
    ('bfloat16', 'cpu', 'bfloat16'), ('float32', 'tpu', 'float32'),
])
def test_compute_dtype(choice, platform, expected):
  assert googlenet.resolve_dtype(choice, platform) == expected


def test_create_model_resolves_auto_dtype():
  expected = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  assert googlenet.create_model('googlenet_tiny', dtype='auto').dtype == expected


def test_an_option_the_compiler_refuses_is_left_out(caplog):
  options = {'xla_no_such_option_for_this_test': True, 'xla_backend_optimization_level': 0}
  with caplog.at_level('INFO', logger='absl'):
    kept = xla_options.supported(options)
  assert kept == {'xla_backend_optimization_level': 0}
  assert 'xla_no_such_option_for_this_test' in caplog.text


def test_a_refused_option_is_named_once_however_many_programs_ask(caplog):
  options = {'xla_no_such_option_asked_twice': True}
  with caplog.at_level('INFO', logger='absl'):
    assert xla_options.supported(options) == {}
    assert xla_options.supported(options) == {}
  assert caplog.text.count('xla_no_such_option_asked_twice=True left out') == 1, caplog.text


def test_programs_still_compile_when_the_jaxlib_lacks_an_option(monkeypatch):
  """As after an upgrade that drops an option: the initializer and the model compile."""
  monkeypatch.setattr(xla_options, 'FAST_COMPILE',
                      {**xla_options.FAST_COMPILE, 'xla_no_such_option_for_this_test': 1})
  monkeypatch.setattr(xla_options, 'CPU_MODEL',
                      {**xla_options.CPU_MODEL, 'xla_no_such_option_for_this_test': 1})
  model = googlenet.create_model('googlenet_tiny', num_classes=3)
  variables = googlenet.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
  images = jnp.ones((2, 32, 32, 3))
  compiled = apply.lower(variables, images).compile(
      xla_options.for_model(jax.default_backend()))
  np.testing.assert_allclose(compiled(variables, images), apply(variables, images),
                             rtol=1e-5, atol=1e-5)


def _onednn_bfloat16_cpu() -> bool:
  """Whether this CPU has what XLA asks of it before it hands bfloat16 work to oneDNN
  (xla/service/cpu/onednn_util.h: AVX-512, AVX-NE-CONVERT or AMX-BF16)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
      flags = set(cpuinfo.read().split())
  except OSError:
    return False
  return bool(flags & {'avx512f', 'avx_ne_convert', 'amx_bf16'})


def test_bfloat16_programs_on_cpu_add_onednn_to_the_float32_options():
  float32 = xla_options.for_model('cpu', jnp.float32)
  assert float32 == xla_options.supported(xla_options.CPU_MODEL, 'cpu')
  assert xla_options.for_model('cpu', jnp.bfloat16) == {
      **float32, **xla_options.supported(xla_options.CPU_BFLOAT16, 'cpu')}
  assert xla_options.for_model('gpu', jnp.bfloat16) == {}


def test_training_and_evaluation_steps_ask_for_the_options_of_their_compute_dtype(monkeypatch):
  asked = []
  for_model = xla_options.for_model
  monkeypatch.setattr(xla_options, 'for_model',
                      lambda platform, dtype: asked.append(jnp.dtype(dtype))
                      or for_model(platform, dtype))
  config = config_lib.get_base_config()
  config.update(model='googlenet_bn_tiny', dtype='bfloat16', batch_size=4)
  model = googlenet.create_model(config.model, num_classes=3, dtype=config.dtype)
  mesh = sharding.create_mesh(jax.devices()[:1])
  _, state_sharding = steps.create_train_state(config, model, (1, 32, 32, 3), mesh, 10)
  steps.make_train_step(config, mesh, state_sharding)
  steps.make_eval_step(mesh, state_sharding, dtype='bfloat16')
  steps.make_eval_step(mesh, state_sharding, dtype='auto')
  assert asked == [jnp.dtype(jnp.bfloat16)] * 2 + [
      jnp.dtype(googlenet.DTYPES[googlenet.resolve_dtype('auto')])]


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='CPU compiler options')
def test_onednn_bfloat16_convolutions_give_xlas_results_and_float32_keeps_xlas_kernels(
    compilation_cache_dir):
  model = googlenet.create_model('googlenet_bn_tiny', num_classes=10, dtype='bfloat16')
  variables = googlenet.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False).logits).lower(variables, images)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    compilation_cache.use_persistent_cache(str(compilation_cache_dir))  # as `train` does
    onednn = apply.compile(xla_options.for_model('cpu', jnp.bfloat16))
  assert not [w for w in caught if 'compilation cache' in str(w.message)], caught
  xla = apply.compile(xla_options.for_model('cpu', jnp.float32))
  assert '__onednn$' not in xla.as_text()
  if '__onednn$convolution' in onednn.as_text():
    assert _onednn_bfloat16_cpu()
  expected = np.asarray(xla(variables, images), np.float32)
  np.testing.assert_allclose(np.asarray(onednn(variables, images), np.float32), expected,
                             rtol=0, atol=0.02 * np.abs(expected).max())
