"""Choices made from the platform: the kernel set, the compute dtype, the XLA options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import xla_options
from inception_jax.model import googlenet
from inception_jax.model import ops


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
