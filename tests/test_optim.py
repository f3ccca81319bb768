"""Tests of inception_jax.training.optim: schedules, weight-decay masks and updates by hand arithmetic."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from inception_jax import config as config_lib
from inception_jax.model import googlenet
from inception_jax.training import optim


def _config(**overrides) -> ml_collections.ConfigDict:
  config = config_lib.get_base_config()
  config.update(overrides)
  return config


def _params() -> dict:
  """A conv with a bias, a BatchNorm and a dense layer, as flax names them."""
  return {'conv': {'kernel': jnp.full((3, 3, 2, 4), 2.0), 'bias': jnp.full((4,), 3.0)},
          'bn': {'scale': jnp.full((4,), 5.0), 'bias': jnp.full((4,), 7.0)},
          'block': {'dense': {'kernel': jnp.full((4, 5), -1.0), 'bias': jnp.zeros((5,))}}}


def _one_update(config, grads, params=None, steps_per_epoch=10, trainable_mask=None):
  params = _params() if params is None else params
  tx = optim.create_optimizer(config, steps_per_epoch, trainable_mask)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_weight_decay_mask_selects_kernels_only():
  mask = optim.weight_decay_mask(_params())
  assert mask == {'conv': {'kernel': True, 'bias': False},
                  'bn': {'scale': False, 'bias': False},
                  'block': {'dense': {'kernel': True, 'bias': False}}}


@pytest.mark.parametrize('name', ['googlenet_tiny', 'googlenet_bn_tiny'])
def test_weight_decay_mask_on_the_models(name):
  model = googlenet.create_model(name, num_classes=5)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jnp.zeros((1, 32, 32, 3)))['params']
  decayed = jax.tree_util.tree_leaves_with_path(optim.weight_decay_mask(params))
  names = {path[-1].key for path, _ in decayed}
  assert names == ({'kernel', 'bias', 'scale'} if 'bn' in name else {'kernel', 'bias'})
  assert all(flag == (path[-1].key == 'kernel') for path, flag in decayed)
  assert sum(flag for _, flag in decayed) > 50  # every conv and dense kernel


def test_layer_bias_mask_leaves_out_normalization_biases():
  assert optim.layer_bias_mask(_params()) == {
      'conv': {'kernel': False, 'bias': True}, 'bn': {'scale': False, 'bias': False},
      'block': {'dense': {'kernel': False, 'bias': True}}}


def test_weight_decay_update_touches_kernels_only():
  config = _config(recipe='paper', learning_rate=0.1, weight_decay=0.01, momentum=0.9)
  zero_grads = jax.tree.map(jnp.zeros_like, _params())
  updates = _one_update(config, zero_grads)
  # SGD: update = -lr * (grad + wd * w) on the first step (empty momentum).
  np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * 0.01 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates['block']['dense']['kernel'], -0.1 * 0.01 * -1.0, rtol=1e-6)
  for leaf in (updates['conv']['bias'], updates['bn']['scale'], updates['bn']['bias'],
               updates['block']['dense']['bias']):
    np.testing.assert_array_equal(leaf, 0.0)


def test_adamw_decays_kernels_only():
  config = _config(recipe='modern', optimizer='adamw', learning_rate=0.1, weight_decay=0.05,
                   warmup_epochs=0.0, num_epochs=10.0)
  updates = _one_update(config, jax.tree.map(jnp.zeros_like, _params()))
  # Zero gradients give a zero Adam direction; the decoupled decay is -lr * wd * w.
  np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * 0.05 * 2.0, rtol=1e-6)
  np.testing.assert_array_equal(updates['bn']['scale'], 0.0)
  np.testing.assert_array_equal(updates['conv']['bias'], 0.0)


def test_paper_schedule_is_a_four_percent_staircase_every_eight_epochs():
  config = _config(recipe='paper', learning_rate=0.045, lr_decay_factor=0.96,
                   lr_decay_epochs=8.0, num_epochs=250.0)
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=10)
  # 8 epochs = 80 steps: constant within, x0.96 at each boundary.
  for step, expected in [(0, 0.045), (79, 0.045), (80, 0.045 * 0.96), (159, 0.045 * 0.96),
                         (160, 0.045 * 0.96**2), (805, 0.045 * 0.96**10)]:
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, err_msg=f'step {step}')


def test_caffe_quick_schedule_is_poly_to_zero():
  config = _config(recipe='caffe_quick', learning_rate=0.01, poly_power=0.5,
                   num_train_steps=1000)
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=100)
  # Caffe "poly": base_lr * (1 - iter / max_iter) ^ power.
  for step, expected in [(0, 0.01), (250, 0.01 * math.sqrt(0.75)), (500, 0.01 * math.sqrt(0.5)),
                         (999, 0.01 * math.sqrt(0.001)), (1000, 0.0), (1200, 0.0)]:
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-9,
                               err_msg=f'step {step}')


def test_caffe_quick_doubles_the_learning_rate_of_layer_biases():
  config = _config(recipe='caffe_quick', learning_rate=0.01, weight_decay=0.0,
                   num_train_steps=1000)
  updates = _one_update(config, jax.tree.map(jnp.ones_like, _params()))
  np.testing.assert_allclose(updates['conv']['kernel'], -0.01, rtol=1e-6)
  np.testing.assert_allclose(updates['conv']['bias'], -0.02, rtol=1e-6)  # lr_mult 2
  np.testing.assert_allclose(updates['block']['dense']['bias'], -0.02, rtol=1e-6)
  np.testing.assert_allclose(updates['bn']['bias'], -0.01, rtol=1e-6)  # not a layer bias


def test_modern_schedule_is_linear_warmup_then_cosine():
  config = _config(recipe='modern', learning_rate=0.1, warmup_epochs=1.0, num_epochs=5.0)
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=10)
  # 50 steps: 10 of warm-up from 0, then 0.1 * (1 + cos(pi * t / 40)) / 2.
  for step, expected in [(0, 0.0), (5, 0.05), (10, 0.1),
                         (20, 0.05 * (1 + math.cos(math.pi / 4))), (30, 0.05),
                         (50, 0.0)]:
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-9,
                               err_msg=f'step {step}')


def test_nesterov_first_step():
  config = _config(recipe='modern', optimizer='sgd', nesterov=True, momentum=0.9,
                   learning_rate=0.1, weight_decay=0.0, num_epochs=10.0)
  updates = _one_update(config, jax.tree.map(jnp.ones_like, _params()))
  # Nesterov: trace = g; update = -lr * (g + momentum * trace) = -0.1 * 1.9.
  np.testing.assert_allclose(updates['conv']['kernel'], -0.19, rtol=1e-6)


def test_global_norm_clipping():
  config = _config(recipe='paper', learning_rate=1.0, weight_decay=0.0, grad_clip_norm=2.0)
  grads = jax.tree.map(jnp.ones_like, _params())
  norm = float(optax.tree.norm(grads))
  updates = _one_update(config, grads)
  np.testing.assert_allclose(optax.tree.norm(updates), 2.0, rtol=1e-5)
  np.testing.assert_allclose(updates['conv']['bias'], -2.0 / norm, rtol=1e-5)


def test_gradient_accumulation_counts_optimizer_updates():
  # 4 steps per epoch, 2 steps per update: 2 updates per epoch; the lr halves every epoch.
  config = _config(recipe='paper', learning_rate=1.0, momentum=0.0, weight_decay=0.0,
                   lr_decay_factor=0.5, lr_decay_epochs=1.0, grad_accum_steps=2)
  params = {'w': jnp.zeros(())}
  tx = optim.create_optimizer(config, steps_per_epoch=4)
  opt_state = tx.init(params)
  applied = []
  for step in range(8):
    grads = {'w': jnp.asarray(float(step % 2 + 1))}  # 1, 2, 1, 2, ...: mean 1.5
    updates, opt_state = tx.update(grads, opt_state, params)
    applied.append(float(updates['w']))
  np.testing.assert_allclose(applied, [0, -1.5, 0, -1.5, 0, -0.75, 0, -0.75], rtol=1e-6)
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=4)
  assert [float(schedule(step // 2)) for step in range(8)] == [1, 1, 1, 1, .5, .5, .5, .5]


def test_trainable_mask_freezes_the_rest_without_optimizer_state():
  config = _config(recipe='paper', learning_rate=0.1, weight_decay=0.01)
  grads = jax.tree.map(jnp.ones_like, _params())
  tree_mask = {'conv': {'kernel': False, 'bias': False}, 'bn': {'scale': False, 'bias': False},
               'block': {'dense': {'kernel': True, 'bias': True}}}
  for mask in (tree_mask, lambda params: tree_mask):
    updates = _one_update(config, grads, trainable_mask=mask)
    np.testing.assert_allclose(updates['block']['dense']['bias'], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates['block']['dense']['kernel'], -0.1 * (1 - 0.01),
                               rtol=1e-6)
    for leaf in jax.tree.leaves({k: updates[k] for k in ('conv', 'bn')}):
      np.testing.assert_array_equal(leaf, 0.0)
  tx = optim.create_optimizer(config, 10, tree_mask)
  momentum_size = sum(x.size for x in jax.tree.leaves(tx.init(_params())))
  assert momentum_size == 4 * 5 + 5 + 1  # the dense layer's trace, plus a step count


def test_ema_update_is_polyak_averaging():
  ema, params = {'w': jnp.asarray(1.0)}, {'w': jnp.asarray(3.0)}
  np.testing.assert_allclose(optim.ema_update(ema, params, 0.9)['w'], 0.9 * 1 + 0.1 * 3)
  for _ in range(10):
    ema = optim.ema_update(ema, params, 0.9)
  # Against a constant target: target - (target - start) * decay ** n.
  np.testing.assert_allclose(ema['w'], 3 - 2 * 0.9**10, rtol=1e-6)


def test_total_train_steps():
  assert optim.total_train_steps(_config(num_epochs=2.5), 40) == 100
  assert optim.total_train_steps(_config(num_epochs=2.5, num_train_steps=7), 40) == 7
  with pytest.raises(ValueError, match='no training steps'):
    optim.total_train_steps(_config(num_epochs=0.0), 40)


@pytest.mark.parametrize('overrides,message', [
    ({'recipe': 'adam_paper'}, 'unknown recipe'),
    ({'optimizer': 'lamb'}, 'unknown optimizer'),
    ({'recipe': 'paper', 'optimizer': 'adamw'}, "set optimizer='sgd'"),
    ({'grad_accum_steps': 0}, 'grad_accum_steps'),
    ({'ema_decay': 1.0}, 'ema_decay'),
    ({'warmup_epochs': 5.0, 'num_epochs': 5.0}, 'warm-up'),
])
def test_bad_configs_fail_clearly(overrides, message):
  with pytest.raises(ValueError, match=message):
    optim.create_optimizer(_config(**overrides), steps_per_epoch=10)


def test_global_norms_equal_optax_global_norm_per_tree():
  """Scalars, vectors, matrices and 4-d kernels; a bfloat16 tree is summed in float32."""
  keys = jax.random.split(jax.random.key(0), 3)
  shapes = {'b': (), 'v': (7,), 'm': (300, 129), 'k': {'kernel': (3, 3, 17, 5)}}
  trees = [jax.tree.map(lambda shape, k=k: 3.0 * jax.random.normal(k, shape), shapes,
                        is_leaf=lambda s: isinstance(s, tuple)) for k in keys]
  trees[2] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), trees[2])
  norms = jax.jit(optim.global_norms)(*trees)
  assert len(norms) == 3
  for norm, tree in zip(norms, trees):
    by_hand = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2))
                            for x in jax.tree.leaves(tree)))
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(float(norm), by_hand, rtol=1e-6)
  for norm, tree in zip(norms[:2], trees[:2]):  # optax sums bfloat16 leaves in bfloat16
    np.testing.assert_allclose(float(norm), float(optax.tree.norm(tree)), rtol=1e-6)


def test_global_norms_of_an_empty_tree_are_zero_and_structures_must_match():
  assert [float(n) for n in optim.global_norms({}, {})] == [0.0, 0.0]
  with pytest.raises(ValueError, match='one structure'):
    optim.global_norms({'a': jnp.ones(2)}, {'b': jnp.ones(2)})
