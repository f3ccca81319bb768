"""inception_jax.model.ops against the plain XLA formulations and their `jax.grad`."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import xla_options
from inception_jax.model import layers, googlenet, ops
from helpers import flax_batch_norm_relu

TOL = dict(rtol=1e-5, atol=1e-5)
# Each check compiles as one program, with the fast-compile options: op by op, every window
# slice and shape compiles on its own, which costs more than these tiny inputs' compute.


def _jit(fn, **kwargs):
  """jax.jit with the fast-compile options this jaxlib knows."""
  return jax.jit(fn, compiler_options=xla_options.fast_compile(), **kwargs)


@functools.partial(_jit, static_argnums=0)
def _values_and_grads(fn, x, *args):
  """fn's output and the vector-Jacobian products with a fixed random cotangent."""
  y, vjp = jax.vjp(fn, x, *args)
  cotangent = jax.random.normal(jax.random.key(7), y.shape, y.dtype)
  return y, vjp(cotangent)


def _plain_pool(window, stride, padding):
  return lambda x: nn.max_pool(x, (window, window), (stride, stride), padding=padding)


@pytest.mark.parametrize('shape,window,stride', [
    ((2, 7, 9, 3), 3, 2),  # odd sizes, ceil mode overhangs on one axis
    ((2, 8, 8, 4), 3, 2),
    ((1, 5, 6, 2), 2, 2),  # torchvision's 2x2 pool before 5a
    ((2, 6, 5, 3), 3, 1),  # the inception blocks' 3x3/1, pad 1
    ((1, 13, 12, 2), 12, 1),  # 144 window cells: offsets wider than a byte
])
@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_matches_xla_and_its_gradient(shape, window, stride, ties):
  pad = 1 if stride == 1 else 0
  padding = tuple(layers.ceil_pool_padding(shape[d], window, stride, pad) for d in (1, 2))
  key = jax.random.key(0)
  x = (jax.random.randint(key, shape, 0, 3).astype(jnp.float32) if ties
       else jax.random.normal(key, shape))
  want, (want_grad,) = _values_and_grads(_plain_pool(window, stride, padding), x)
  got, (got_grad,) = _values_and_grads(lambda v: ops.max_pool(v, window, stride, padding), x)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got_grad, want_grad, **TOL)


def test_max_pool_ties_go_to_the_first_maximum():
  x = jnp.ones((1, 2, 2, 1))
  grad = jax.grad(lambda v: ops.max_pool(v, 2, 2, ((0, 0), (0, 0))).sum())(x)
  np.testing.assert_array_equal(grad[0, :, :, 0], [[1, 0], [0, 0]])


def test_max_pool_windows_of_minus_infinity_route_like_xla():
  x = jnp.full((1, 4, 4, 1), -jnp.inf).at[0, 3, 3, 0].set(1.0)
  padding = ((0, 0), (0, 0))
  _, (want,) = _values_and_grads(_plain_pool(2, 2, padding), x)
  _, (got,) = _values_and_grads(lambda v: ops.max_pool(v, 2, 2, padding), x)
  np.testing.assert_array_equal(got, want)


def test_max_pool_bfloat16_matches_xla_and_pools_in_float32():
  padding = ((0, 1), (0, 1))
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 4), jnp.bfloat16)
  want, (want_grad,) = _values_and_grads(_plain_pool(3, 2, padding), x)
  got, (got_grad,) = _values_and_grads(lambda v: ops.max_pool(v, 3, 2, padding), x)
  assert got.dtype == got_grad.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.float32(got), np.float32(want))
  np.testing.assert_allclose(np.float32(got_grad), np.float32(want_grad), rtol=1e-2, atol=1e-2)
  # The windows are reduced in float32: XLA's CPU compiler otherwise keeps a bfloat16
  # maximum, between conversions, inside the reduction's loop (the slow part).
  fn = lambda v: ops.max_pool(v, 3, 2, padding).astype(jnp.float32).sum()
  for traced in (fn, jax.grad(fn)):
    jaxpr = jax.make_jaxpr(traced)(x)
    windows = [e for e in _equations(jaxpr.jaxpr)
               if e.primitive.name in ('reduce_window', 'max', 'select_n')]
    assert windows and {str(v.aval.dtype) for e in windows for v in e.invars
                        if jnp.issubdtype(v.aval.dtype, jnp.floating)} == {'float32'}, jaxpr
  hlo = _jit(lambda v: ops.max_pool(v, 3, 2, padding)).lower(x).compile().as_text()
  assert 'reduce-window(' in hlo and not re.search(r'bf16\[\] maximum', hlo), hlo


def _equations(jaxpr):
  """Every equation of `jaxpr`, those of the jaxprs nested in it (custom_vjp, pjit) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


def test_max_pool_rejects_integer_input():
  with pytest.raises(TypeError, match='floating-point'):
    ops.max_pool(jnp.zeros((1, 4, 4, 1), jnp.int32), 2, 2, ((0, 0), (0, 0)))


@pytest.mark.parametrize('kernel_size,stride,pad', [(1, 1, 0), (3, 1, 1), (7, 2, 3), (1, 2, 0)])
def test_conv2d_matches_xla_and_its_gradients(kernel_size, stride, pad):
  _assert_conv_matches_xla(ops.conv2d, jax.random.key(2), (2, 9, 7, 5), kernel_size, stride, pad)


@pytest.mark.parametrize('shape,kernel_size,stride,pad', [
    ((2, 2, 2, 5), 3, 1, 1),  # googlenet_bn's inception 5 at 64x64 input
    ((2, 4, 3, 5), 5, 1, 2),  # the paper's 5x5 at 4x4, non-square
    ((2, 1, 1, 5), 3, 1, 1),
    ((2, 9, 7, 5), 3, 2, 1),  # patches_conv2d is general: strided, larger inputs
    ((2, 9, 7, 5), 7, 2, 3),
])
def test_conv2d_with_kernel_larger_than_input_matches_xla(shape, kernel_size, stride, pad):
  for fn in (ops.conv2d, ops.patches_conv2d):
    _assert_conv_matches_xla(fn, jax.random.key(5), shape, kernel_size, stride, pad)


def _assert_conv_matches_xla(fn, key, shape, kernel_size, stride, pad):
  """fn(x, kernel, stride, padding) and its gradients equal lax.conv_general_dilated's."""
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kw, (kernel_size, kernel_size, shape[-1], 6))
  padding = ((pad, pad), (pad, pad))

  def plain(v, w):
    return jax.lax.conv_general_dilated(v, w, (stride, stride), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  want, want_grads = _values_and_grads(plain, x, kernel)
  got, got_grads = _values_and_grads(lambda v, w: fn(v, w, stride, padding), x, kernel)
  np.testing.assert_allclose(got, want, **TOL)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_batch_norm_relu_equals_flax_with_the_same_gradients():
  keys = jax.random.split(jax.random.key(5), 6)
  x = 2.0 + jax.random.normal(keys[0], (4, 5, 6, 3))
  scale = 1.0 + 0.3 * jax.random.normal(keys[1], (3,))
  bias = 0.5 * jax.random.normal(keys[2], (3,))
  weights = [jax.random.normal(k, s) for k, s in zip(keys[3:], (x.shape, (3,), (3,)))]

  def loss(fn, *args):  # every output counts, the statistics too
    return sum(jnp.sum(out * w) for out, w in zip(fn(*args), weights))

  got = _jit(ops.batch_norm_relu, static_argnums=3)(x, scale, bias, 1e-3)
  want = _jit(flax_batch_norm_relu)(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, **TOL)
  assert 0.2 < float(jnp.mean(got[0] == 0)) < 0.8  # the ReLU cuts a real share
  got_grads = _jit(jax.grad(lambda *a: loss(lambda *b: ops.batch_norm_relu(*b, 1e-3), *a),
                            argnums=(0, 1, 2)))(x, scale, bias)
  want_grads = _jit(jax.grad(lambda *a: loss(flax_batch_norm_relu, *a), argnums=(0, 1, 2)))(
      x, scale, bias)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_batch_norm_relu_keeps_bfloat16_activations_and_float32_statistics():
  x = jax.random.normal(jax.random.key(6), (4, 5, 6, 3))
  scale, bias = jnp.full((3,), 1.5), jnp.full((3,), 0.1)
  want = ops.batch_norm_relu(x, scale, bias, 1e-3)
  got = ops.batch_norm_relu(x.astype(jnp.bfloat16), scale, bias, 1e-3)
  assert [a.dtype for a in got] == [jnp.bfloat16, jnp.float32, jnp.float32]
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=2e-2, atol=2e-2)
  dx = jax.grad(lambda v: jnp.sum(ops.batch_norm_relu(v, scale, bias, 1e-3)[0]))(
      x.astype(jnp.bfloat16))
  assert dx.dtype == jnp.bfloat16


def test_batch_norm_relu_layer_trains_and_evaluates_like_flax_batch_norm():
  x = 1.0 + jax.random.normal(jax.random.key(8), (4, 5, 6, 3))
  fused = layers.BatchNormReLU(momentum=0.9, epsilon=1e-3)
  plain = nn.BatchNorm(momentum=0.9, epsilon=1e-3)
  variables = plain.init(jax.random.key(0), x, use_running_average=False)
  params = {'scale': jnp.array([0.5, 1.0, 2.0]), 'bias': jnp.array([0.1, -0.2, 0.3])}
  variables = {'params': params, 'batch_stats': variables['batch_stats']}
  assert (jax.tree.map(jnp.shape, fused.init(jax.random.key(0), x, use_running_average=False))
          == jax.tree.map(jnp.shape, variables))
  got, got_stats = fused.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  want, want_stats = plain.apply(variables, x, use_running_average=False,
                                 mutable=['batch_stats'])
  np.testing.assert_allclose(got, nn.relu(want), **TOL)
  for g, w in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_allclose(g, w, **TOL)
  assert not np.allclose(got_stats['batch_stats']['mean'], 0.0)  # the running mean moved
  trained = {**variables, **want_stats}
  np.testing.assert_allclose(fused.apply(trained, x, use_running_average=True),
                             nn.relu(plain.apply(trained, x, use_running_average=True)), **TOL)


def test_unknown_ops_is_refused():
  model = googlenet.create_model('googlenet_tiny', ops='cuda')
  with pytest.raises(ValueError, match="'xla'"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['googlenet_tiny', 'googlenet_bn_shallow'])
def test_fast_model_equals_xla_model(name):
  """Same parameters → same logits, aux logits, batch statistics and gradients.

  Both kernel sets are named explicitly ('auto' is 'fast' on CPU), and the programs
  must differ as the fast set promises: without that the test would compare a model
  with itself and pass if `ops` were ignored.
  """
  plain = googlenet.create_model(name, num_classes=5, ops='xla')
  fast = googlenet.create_model(name, num_classes=5, ops='fast')
  images = jax.random.normal(jax.random.key(3), (4, 48, 48, 3))
  variables = googlenet.init_variables(plain, jax.random.key(0), images.shape)
  fast_shapes = jax.eval_shape(lambda: fast.init(jax.random.key(0), images, train=False))
  assert jax.tree.map(jnp.shape, fast_shapes) == jax.tree.map(jnp.shape, variables)

  def loss(model, params):
    output, state = model.apply({**variables, 'params': params}, images, train=True,
                                rngs={'dropout': jax.random.key(4)}, mutable=['batch_stats'])
    total = jnp.sum(output.logits ** 2) + sum(jnp.sum(a ** 2) for a in output.aux_logits)
    return total, (output, state)

  def grads(model):
    """The training step's StableHLO text and its (loss, (output, state)), gradients."""
    lowered = _jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True)).lower(
        variables['params'])
    return lowered.as_text(), lowered.compile()(variables['params'])

  want_text, ((want_loss, (want, want_state)), want_grads) = grads(plain)
  got_text, ((got_loss, (got, got_state)), got_grads) = grads(fast)
  # The fast set routes max-pool gradients by stored offsets (XLA: select_and_scatter)
  # and computes 1x1 convolutions as matrix products.
  assert 'stablehlo.select_and_scatter' in want_text
  assert 'stablehlo.select_and_scatter' not in got_text
  convolutions = [text.count('stablehlo.convolution') for text in (got_text, want_text)]
  assert 0 < convolutions[0] < convolutions[1] / 2, convolutions
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-4)
  for g, w in zip(jax.tree.leaves((got, got_state)), jax.tree.leaves((want, want_state))):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  for path, g in jax.tree_util.tree_leaves_with_path(got_grads):
    w = dict(jax.tree_util.tree_leaves_with_path(want_grads))[path]
    scale = float(jnp.max(jnp.abs(w))) + 1e-12
    np.testing.assert_allclose(g / scale, w / scale, atol=1e-4, err_msg=str(path))


@pytest.mark.parametrize('batch_norm', [False, True])
def test_pointwise_conv_relus_equal_separate_convs(batch_norm):
  """One fused matrix product gives each conv's output and batch statistics."""
  widths = (3, 5, 2)

  class Separate(nn.Module):
    fused: bool

    @nn.compact
    def __call__(self, x):
      convs = [layers.ConvReLU(w, 1, batch_norm=batch_norm, ops='fast', name=f'c{i}',
                               bias_init=nn.initializers.normal(1.0))
               for i, w in enumerate(widths)]
      if self.fused:
        return layers.pointwise_conv_relus(convs, x, train=True)
      return [c(x, train=True) for c in convs]

  x = jax.random.normal(jax.random.key(5), (2, 4, 3, 6))
  variables = _jit(Separate(False).init)(jax.random.key(0), x)
  want, want_state = _jit(lambda v: Separate(False).apply(v, x, mutable=['batch_stats']))(
      variables)
  got, got_state = _jit(lambda v: Separate(True).apply(v, x, mutable=['batch_stats']))(variables)
  assert [g.shape for g in got] == [(2, 4, 3, w) for w in widths]
  for g, w in zip(jax.tree.leaves((got, got_state)), jax.tree.leaves((want, want_state))):
    np.testing.assert_allclose(g, w, **TOL)


def test_pointwise_conv_relus_refuses_a_3x3():
  class Bad(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.pointwise_conv_relus([layers.ConvReLU(2, 3, ops='fast')], x, train=False)

  with pytest.raises(ValueError, match='kernel 3'):
    Bad().init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
