"""Every JAX transformation of the model, with each kernel set, against the `xla` set.

The `fast` set's max pool and BatchNorm+ReLU have their own differentiation rules
(`ops.py`); the `xla` set differentiates JAX's own primitives, an independent
derivation. Each check compiles one program holding every transformation (forward
mode, reverse mode, both composed, `vmap`) of one tiny model in one mode, and the
loss's forward and reverse derivatives are also checked against each other.

Tolerance: the two sets differ in summation order (1x1 convolutions as matrix
products, BatchNorm's gradient sums, the pools' gradient routing), which changes
float32 results by rounding: about 1e-7 of a value's scale per operation, more
through the network's depth and the cancellations of second derivatives. Each
quantity (a gradient, a Hessian-vector product, ...) is compared relative to its
largest magnitude, to TOLERANCE: a parameter whose entries are all far smaller
than the quantity's scale holds mostly rounding error.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import xla_options
from inception_jax.model import googlenet
from inception_jax.model import ops as ops_lib
from inception_jax.training import steps
from helpers import flax_batch_norm_relu

IMAGE_SHAPE = (2, 32, 32, 3)
CLASSES = 5
TOLERANCE = 2e-4
# Every layer kind and both aux heads with four of the nine blocks: each check
# compiles about ten differentiated copies of the network.
BLOCKS = ('3a', '4a', '4d', '5b')


def transformations(model, train, variables, images, labels, direction, rng):
  """Each transformation of the model's loss, batch statistics and logits.

  `direction` is a parameter-shaped tangent; the images' tangent is the images
  themselves (a change of their scale). Every array is an argument, not a
  constant XLA would fold while compiling.
  """
  params = variables['params']

  def outputs(params, scale=1.0, images=images, labels=labels):
    """(loss, new batch statistics, logits) for the images times `scale`."""
    batch = {'image': scale * images, 'label': labels}
    loss, (_, batch_stats) = steps.model_loss(model, {**variables, 'params': params}, batch,
                                              rng, train)
    return loss, batch_stats

  def loss(params):
    return outputs(params)[0]

  def example_loss(params, image, label):
    return outputs(params, 1.0, image[None], label[None])[0]

  def along(t):
    return loss(jax.tree.map(lambda p, d: p + t * d, params, direction))

  primal, tangent = jax.jvp(outputs, (params,), (direction,))
  _, linearized = jax.linearize(outputs, params)
  return {
      'outputs': primal,
      'grad': jax.grad(loss)(params),
      'jvp': tangent,
      'linearize': linearized(direction),
      'jacfwd': jax.jacfwd(lambda s: outputs(params, s))(1.0),
      'hessian': jax.hessian(along)(0.0),
      'grad_of_grad': jax.grad(jax.grad(along))(0.0),
      'forward_over_reverse': jax.jvp(jax.grad(loss), (params,), (direction,))[1],
      'per_example_grads': jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(
          params, images, labels),
  }


@functools.lru_cache(maxsize=None)
def results(name: str, ops: str, train: bool):
  """`transformations` of model `name` with kernel set `ops`, and its inputs."""
  model = googlenet.create_model(name, num_classes=CLASSES, ops=ops, blocks=BLOCKS)
  keys = jax.random.split(jax.random.key(0), 4)
  variables = googlenet.init_variables(model, keys[0], IMAGE_SHAPE)
  if 'batch_stats' in variables:  # running statistics unlike a fresh init's, for eval mode
    variables['batch_stats'] = jax.tree.map(
        lambda s: s + 0.1 * jax.random.uniform(keys[1], s.shape), variables['batch_stats'])
  images = jax.random.normal(keys[2], IMAGE_SHAPE)
  labels = jnp.arange(IMAGE_SHAPE[0]) % CLASSES
  direction = jax.tree.map(lambda p: 0.01 * jax.random.normal(keys[3], p.shape),
                           variables['params'])
  run = jax.jit(functools.partial(transformations, model, train),
                compiler_options=xla_options.fast_compile())
  return run(variables, images, labels, direction, jax.random.key(2)), direction


def _assert_close(got, want, what):
  """Equal to TOLERANCE times the largest magnitude in `want`, the quantity's scale."""
  scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want)) + 1e-30
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(w) / scale, atol=TOLERANCE,
                               rtol=0, err_msg=f'{what}{jax.tree_util.keystr(path)}')


# Two models and modes reach every custom rule and every layer kind: BatchNorm+ReLU's
# rule acts only in training mode, where dropout and the aux heads are on too; the pools,
# LRN and the aux-free evaluation graph come with the BatchNorm-free model in eval mode.
@pytest.mark.slow  # each model and mode compiles about ten differentiated copies per set
@pytest.mark.parametrize('name, train', [('googlenet_bn_tiny', True), ('googlenet_tiny', False)],
                         ids=['googlenet_bn_tiny-train', 'googlenet_tiny-eval'])
def test_every_transformation_equals_the_xla_sets(name, train):
  want, direction = results(name, 'xla', train)
  for ops in ops_lib.OPS:
    got, _ = results(name, ops, train)
    for what in got:
      _assert_close(got[what], want[what], f'{ops}: {what}')
    # Within the set, forward and reverse mode agree: the loss's derivative along the
    # direction, and its second derivative there, each computed three ways.
    np.testing.assert_allclose(got['jvp'][0], _tree_dot(got['grad'], direction),
                               rtol=TOLERANCE)
    curvature = _tree_dot(got['forward_over_reverse'], direction)
    np.testing.assert_allclose(got['hessian'], got['grad_of_grad'], rtol=TOLERANCE)
    np.testing.assert_allclose(got['hessian'], curvature, rtol=TOLERANCE)
    _assert_close(got['linearize'], got['jvp'], f'{ops}: linearize vs jvp')


def _tree_dot(a, b) -> float:
  return float(sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


POOL_PADDING = ((0, 1), (0, 1))  # ceil mode on 6x6: the last windows overhang


KERNELS = {  # name: (the fast set's function, XLA's formulation of it)
    'max_pool': (lambda x, s, b: ops_lib.max_pool(x * s + b, 3, 2, POOL_PADDING),
                 lambda x, s, b: nn.max_pool(x * s + b, (3, 3), (2, 2), padding=POOL_PADDING)),
    'batch_norm_relu': (lambda x, s, b: ops_lib.batch_norm_relu(x, s, b, 1e-3),
                        flax_batch_norm_relu),
}


def kernel_transformations(fn, x, scale, bias, weights):
  """Each transformation of `fn(x, scale, bias)` and of a scalar of it, on small inputs."""
  def scalar(x, scale, bias):
    return sum(jnp.sum(w * out) for w, out in zip(weights, jax.tree.leaves(fn(x, scale, bias))))

  tangents = (jnp.cos(x), jnp.sin(scale), jnp.cos(bias))
  _, linearized = jax.linearize(fn, x, scale, bias)
  grad_x = jax.grad(scalar)
  return {
      'value': fn(x, scale, bias),
      'jvp': jax.jvp(fn, (x, scale, bias), tangents)[1],
      'linearize': linearized(*tangents),
      'jacfwd': jax.jacfwd(fn, argnums=(0, 1, 2))(x, scale, bias),
      'grad': jax.grad(scalar, argnums=(0, 1, 2))(x, scale, bias),
      'hessian': jax.hessian(scalar, argnums=(0, 1))(x, scale, bias),
      'grad_of_grad': jax.grad(lambda *a: jnp.sum(jnp.sin(grad_x(*a))), argnums=(0, 1))(
          x, scale, bias),
      'forward_over_reverse': jax.jvp(lambda v: grad_x(v, scale, bias), (x,), (tangents[0],))[1],
      'vmap_grad': jax.vmap(grad_x, in_axes=(0, None, None))(jnp.stack([x, -x]), scale, bias),
  }


@pytest.mark.parametrize('kernel', sorted(KERNELS))
def test_every_transformation_of_each_fast_kernel_equals_xlas(kernel):
  """The fast kernels alone, so each rule is checked where a difference cannot hide."""
  keys = jax.random.split(jax.random.key(kernel == 'max_pool'), 4)
  x = 1.0 + jax.random.normal(keys[0], (2, 6, 6, 3))
  scale = 1.0 + 0.3 * jax.random.normal(keys[1], (3,))
  bias = 0.5 * jax.random.normal(keys[2], (3,))
  outputs = jax.eval_shape(KERNELS[kernel][1], x, scale, bias)
  weights = [jax.random.normal(k, o.shape) for k, o in
             zip(jax.random.split(keys[3], 3), jax.tree.leaves(outputs))]
  got, want = (
      jax.jit(functools.partial(kernel_transformations, fn),
              compiler_options=xla_options.fast_compile())(x, scale, bias, weights)
      for fn in KERNELS[kernel])
  for what in want:
    _assert_close(got[what], want[what], what)
