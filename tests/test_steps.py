"""Tests of inception_jax.training.loop on one device: the loss, the step, evaluation, NaN guard.

The GoogLeNet tests share one compiled step (module-scoped fixture). Steps are
compiled with `xla_options.FAST_COMPILE` (XLA backend optimizations off),
which cuts compile time on CPU about threefold; results are still bit-for-bit
reproducible, which is what these tests rely on. Mechanics that need other
configurations (gradient accumulation, crops) use small stand-in models that
compile in a moment.
"""

import math
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax import metrics as metrics_lib
from inception_jax import sharding as sharding_lib
from inception_jax import xla_options
from inception_jax.model import googlenet
from inception_jax.training import optim, steps

NUM_CLASSES = 5
IMAGE_SHAPE = (1, 32, 32, 3)
FAST = xla_options.FAST_COMPILE


def _config(**overrides) -> ml_collections.ConfigDict:
  config = config_lib.get_base_config()
  config.update(dict(model='googlenet_tiny', batch_size=8, recipe='modern', optimizer='adamw',
                     learning_rate=3e-3, warmup_epochs=0.0, num_train_steps=100,
                     ema_decay=0.9, aux_weight=0.3), **overrides)
  return config


def _copy(state: steps.TrainState) -> steps.TrainState:
  """A copy with its own buffers, since the compiled step donates its input state."""
  return jax.tree.map(jnp.copy, state)


def _tiny_batch(size: int = 8, seed: int = 1) -> dict[str, jax.Array]:
  pixels = jax.random.randint(jax.random.key(seed), (size, *IMAGE_SHAPE[1:]), 0, 256)
  return {'image': pixels.astype(jnp.uint8),
          'label': jnp.arange(size, dtype=jnp.int32) % NUM_CLASSES}


def _normalized(pixels, config) -> np.ndarray:
  """The model inputs of uint8 pixels, by numpy in float64."""
  return ((np.asarray(pixels, np.float64) - np.asarray(config.mean_rgb))
          / np.asarray(config.std_rgb))


@pytest.fixture(scope='module')
def tiny():
  """googlenet_tiny's state (seed 0, EMA on), its compiled train and eval steps, and its
  jitted training-mode forward pass (compiled once, for the tests that redo a step's)."""
  config = _config()
  model = googlenet.create_model('googlenet_tiny', num_classes=NUM_CLASSES)
  mesh = sharding_lib.create_mesh()
  state, sharding = steps.create_train_state(config, model, IMAGE_SHAPE, mesh, 100)
  return types.SimpleNamespace(
      config=config, model=model, mesh=mesh, state=state, sharding=sharding,
      step=steps.make_train_step(config, mesh, sharding, FAST),
      eval_step=steps.make_eval_step(mesh, sharding, FAST),
      forward=jax.jit(lambda params, images, rng: model.apply(
          {'params': params}, images, train=True, rngs={'dropout': rng})))


def _norm(tree) -> float:
  """The global norm of a tree of host arrays, in float64."""
  return math.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))


def _top_k_fractions(logits, labels) -> tuple[float, float]:
  """Top-1 and top-5 accuracy by numpy: the label's rank among the logits."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  ranks = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(-1)
  return float(np.mean(ranks < 1)), float(np.mean(ranks < 5))


def _run(tiny, state, steps: int, batch=None):
  batch = _tiny_batch() if batch is None else batch
  history = []
  for _ in range(steps):
    state, metrics = tiny.step(state, batch)
    history.append(jax.device_get(metrics))
  return state, history


# The loss and accuracy, with hand-made logits.

LN = math.log


def test_cross_entropy_by_hand():
  logits = jnp.array([[0.0, LN(3)], [0.0, LN(3)]])
  np.testing.assert_allclose(steps.cross_entropy(logits, jnp.array([1, 0])),
                             [LN(4 / 3), LN(4)], rtol=1e-6)
  # Smoothing 0.2 over 2 classes: targets (0.1, 0.9) for label 1.
  np.testing.assert_allclose(steps.cross_entropy(logits[:1], jnp.array([1]), 0.2),
                             [0.1 * LN(4) + 0.9 * LN(4 / 3)], rtol=1e-6)


def _output_with_aux() -> googlenet.ModelOutput:
  """Label 1: main p = 3/4, aux1 p = 1/2, aux2 p = 1/4."""
  return googlenet.ModelOutput(logits=jnp.array([[0.0, LN(3)]]),
                            aux_logits=(jnp.zeros((1, 2)), jnp.array([[LN(3), 0.0]])))


@pytest.mark.parametrize('aux_weight', [0.3, 1.0])
def test_loss_weights_each_aux_head_by_aux_weight(aux_weight):
  loss, terms = steps.classification_loss(_output_with_aux(), jnp.array([1]), aux_weight)
  expected = LN(4 / 3) + aux_weight * (LN(2) + LN(4))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(terms['loss'], expected, rtol=1e-6)
  np.testing.assert_allclose(terms['main_loss'], LN(4 / 3), rtol=1e-6)
  np.testing.assert_allclose(terms['aux1_loss'], LN(2), rtol=1e-6)
  np.testing.assert_allclose(terms['aux2_loss'], LN(4), rtol=1e-6)


def test_zero_aux_weight_or_no_aux_heads_give_the_main_loss_alone():
  loss, terms = steps.classification_loss(_output_with_aux(), jnp.array([1]), 0.0)
  assert float(loss) == float(terms['main_loss'])
  np.testing.assert_allclose(terms['aux2_loss'], LN(4), rtol=1e-6)  # still reported
  no_aux = googlenet.ModelOutput(logits=jnp.array([[0.0, LN(3)]]))
  loss, terms = steps.classification_loss(no_aux, jnp.array([1]), 0.3)
  assert set(terms) == {'loss', 'main_loss'}
  np.testing.assert_allclose(loss, LN(4 / 3), rtol=1e-6)


def test_top_k_correct_by_hand():
  logits = jnp.array([[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]])
  labels = jnp.array([6, 6])
  assert metrics_lib.top_k_correct(logits, labels, 1).tolist() == [True, False]
  assert metrics_lib.top_k_correct(logits, labels, 5).tolist() == [True, False]
  assert metrics_lib.top_k_correct(logits, jnp.array([1, 1]), 5).tolist() == [False, True]
  assert metrics_lib.top_k_correct(logits[:, :3], jnp.array([0, 2]), 5).tolist() == [True, True]


# The step on googlenet_tiny.


def test_state_is_created_replicated_with_its_parts(tiny):
  state = tiny.state
  assert int(state.step) == 0 and state.batch_stats == {}
  assert state.rng.dtype == jnp.uint32
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(sharding_lib.replicated(tiny.mesh), leaf.ndim)
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)


def test_step_updates_state_and_reports_every_metric(tiny):
  state = _copy(tiny.state)
  before = jax.device_get(state)
  batch = _tiny_batch()
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0)
  logits = tiny.forward(state.params, _normalized(batch['image'], tiny.config),
                        key).logits  # the step's own
  new_state, metrics = tiny.step(state, batch)
  after, metrics = jax.device_get((new_state, metrics))
  assert set(metrics) == {'loss', 'main_loss', 'aux1_loss', 'aux2_loss', 'top1', 'top5',
                          'learning_rate', 'grad_norm', 'param_norm', 'update_norm'}
  assert int(after.step) == 1
  np.testing.assert_allclose(metrics['loss'], metrics['main_loss'] + 0.3 * (
      metrics['aux1_loss'] + metrics['aux2_loss']), rtol=1e-6)
  # Top-1 is right on 3 of the 8 examples; top-5 of 5 classes always is (top-5 proper:
  # test_step_scores_top1_and_top5_by_the_labels_rank, 10 classes).
  assert _top_k_fractions(logits, batch['label']) == (3 / 8, 1.0)
  assert (metrics['top1'], metrics['top5']) == (3 / 8, 1.0)
  lr = optim.create_learning_rate_schedule(tiny.config, 100)(0)
  np.testing.assert_allclose(metrics['learning_rate'], lr, rtol=1e-7)
  np.testing.assert_allclose(metrics['param_norm'], _norm(after.params), rtol=1e-5)
  update = jax.tree.map(lambda new, old: new - old, after.params, before.params)
  np.testing.assert_allclose(metrics['update_norm'], _norm(update), rtol=1e-4)
  assert metrics['grad_norm'] > 0 and metrics['update_norm'] > 0
  # Polyak averaging with decay 0.9, from the initial parameters.
  jax.tree.map(lambda ema, old, new: np.testing.assert_allclose(
      ema, 0.9 * old + 0.1 * new, rtol=1e-6, atol=1e-7),
               after.ema_params, before.ema_params, after.params)


def test_dropout_key_is_the_base_key_folded_with_the_step(tiny):
  state = _copy(tiny.state)
  batch = _tiny_batch()
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0)
  forward = tiny.forward
  images = _normalized(batch['image'], tiny.config)
  output = forward(state.params, images, key)
  _, metrics = tiny.step(state, batch)
  expected = steps.cross_entropy(output.logits, batch['label']).mean()
  np.testing.assert_allclose(metrics['main_loss'], expected, rtol=1e-5)
  other = forward(tiny.state.params, images, jax.random.fold_in(key, 1))
  assert abs(float(steps.cross_entropy(other.logits, batch['label']).mean()) - expected) > 1e-4


def test_same_seed_is_bit_identical_and_another_seed_differs(tiny):
  first, _ = _run(tiny, _copy(tiny.state), 3)
  second, _ = _run(tiny, _copy(tiny.state), 3)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(first), jax.device_get(second))
  other_seed, _ = steps.create_train_state(_config(seed=1), tiny.model, IMAGE_SHAPE, tiny.mesh,
                                           100)
  assert not np.array_equal(other_seed.rng, tiny.state.rng)
  # Into the fixture's tree structure (the same static fields), so the step is reused.
  other_seed = jax.tree.unflatten(jax.tree.structure(tiny.state), jax.tree.leaves(other_seed))
  other, _ = _run(tiny, other_seed, 3)
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(other.params)):
    assert not np.allclose(a, b)


def test_overfits_a_tiny_batch(tiny):
  batch = {**_tiny_batch(), 'mask': jnp.ones(8)}
  state = _copy(tiny.state)
  start = jax.device_get(tiny.eval_step(state, batch))
  state, history = _run(tiny, state, 100, {k: batch[k] for k in ('image', 'label')})
  end = jax.device_get(tiny.eval_step(state, batch))
  # Evaluation (no dropout, EMA parameters) on the 8 training images.
  start_loss, end_loss = start['loss_sum'] / 8, end['loss_sum'] / 8
  assert start_loss > 1.5 and end_loss < start_loss / 5, (start_loss, end_loss)
  assert end['correct_top1'] == 8 and end['count'] == 8
  assert np.mean([m['loss'] for m in history[-10:]]) < history[0]['loss'] / 3


def test_a_nan_parameter_stops_with_a_clear_error(tiny):
  state = _copy(tiny.state)
  first, *rest = jax.tree.leaves(state.params)
  state = state.replace(params=jax.tree.unflatten(jax.tree.structure(state.params),
                                                  [first.at[(0,) * first.ndim].set(jnp.nan),
                                                   *rest]))
  _, metrics = tiny.step(state, _tiny_batch())
  record = jax.device_get(steps.track_nonfinite(None, metrics, 1))
  with pytest.raises(errors.NonFiniteError, match=r'^step 1: loss is nan; aux1_loss is nan; '):
    steps.check_finite(record)


def test_nonfinite_record_keeps_the_first_bad_step_and_its_values():
  finite = {'loss': jnp.float32(2.0), 'grad_norm': jnp.float32(1.0), 'top1': jnp.float32(0.5)}
  record = steps.track_nonfinite(None, finite, 1)
  record = steps.track_nonfinite(record, {**finite, 'top1': jnp.float32(jnp.nan)}, 2)
  steps.check_finite(jax.device_get(record))  # top1 is not watched: no error
  record = steps.track_nonfinite(record, {**finite, 'grad_norm': jnp.float32(jnp.inf)}, 12)
  record = steps.track_nonfinite(record, {**finite, 'loss': jnp.float32(jnp.nan)}, 13)
  with pytest.raises(FloatingPointError, match=r'^step 12: loss is 2.0; grad_norm is inf; '
                                               r'.*learning_rate'):
    steps.check_finite(jax.device_get(record))


def test_state_saves_and_restores_whole_with_orbax(tiny, tmp_path):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'state', tiny.state)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tiny.state)
  restored = checkpointer.restore(tmp_path / 'state', abstract)
  assert restored.batch_stats == {} and restored.tx is tiny.state.tx
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored),
               jax.device_get(tiny.state))


def test_the_step_compiled_once(tiny):
  state, _ = _run(tiny, _copy(tiny.state), 3)
  tiny.step(state, _tiny_batch(seed=7))
  assert tiny.step._cache_size() == 1  # pylint: disable=protected-access


def test_a_step_built_again_is_not_compiled_again(tiny):
  # A notebook cell run again builds the step anew: the program compiled for it is reused.
  state, batch = _copy(tiny.state), _tiny_batch()
  tiny.step(_copy(tiny.state), batch)
  compiles = []

  def listener(name: str, seconds: float, **kwargs) -> None:
    del seconds, kwargs
    if name == '/jax/core/compile/backend_compile_duration':
      compiles.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    again = steps.make_train_step(tiny.config, tiny.mesh, tiny.sharding, FAST)
    again(state, batch)[1]['loss'].block_until_ready()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles


def test_a_step_compiled_for_the_abstract_state_trains_the_initialized_one(tiny):
  # What the trainer does: compile from shapes while the state is initialized.
  initialize, abstract = steps.train_state_initializer(tiny.config, tiny.model, IMAGE_SHAPE,
                                                       tiny.mesh, 100)
  batch = _tiny_batch()
  batch_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding_lib.batch_sharding(tiny.mesh)), batch)
  compiled = steps.make_train_step(tiny.config, tiny.mesh, steps.shardings_of(abstract),
                                   FAST).lower(abstract, batch_spec).compile()
  state = initialize()
  for want, leaf in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
    assert (want.shape, want.dtype) == (leaf.shape, leaf.dtype)
    assert leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim)
  jax.tree.map(np.testing.assert_array_equal, state.params, tiny.state.params)  # same seed
  _, metrics = compiled(state, batch)
  _, expected = tiny.step(_copy(tiny.state), batch)
  assert float(metrics['loss']) == float(expected['loss'])


# Mechanics checked on small stand-in models.


class _MeanLinear(nn.Module):
  """logits = (mean of the image over pixels) @ kernel + bias: outputs easy to compute."""
  num_classes: int

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> googlenet.ModelOutput:
    del train
    return googlenet.ModelOutput(logits=nn.Dense(self.num_classes, name='classifier')(
        images.mean(axis=(1, 2))))


def _linear_state(config, num_classes: int = 7, image_size: int = 4):
  mesh = sharding_lib.create_mesh()
  state, sharding = steps.create_train_state(config, _MeanLinear(num_classes),
                                             (1, image_size, image_size, 3), mesh, 10)
  return state, sharding, mesh


def test_step_scores_top1_and_top5_by_the_labels_rank():
  """10 classes, labels of known rank among each example's own logits (0 = highest)."""
  config = _config(aux_weight=0.0)
  state, sharding, mesh = _linear_state(config, num_classes=10)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(8, 4, 4, 3), dtype=np.uint8)
  kernel, bias = (np.asarray(state.params['classifier'][k], np.float64) for k in ('kernel', 'bias'))
  logits = _normalized(images, config).mean(axis=(1, 2)) @ kernel + bias  # as _MeanLinear's
  ranks = np.array([0, 1, 4, 5, 9, 0, 2, 7])  # top-1: 2 of 8; top-5: 5 of 8
  labels = np.argsort(-logits, axis=-1)[np.arange(8), ranks].astype(np.int32)
  assert _top_k_fractions(logits, labels) == (2 / 8, 5 / 8)
  _, metrics = steps.make_train_step(config, mesh, sharding)(
      state, {'image': images, 'label': labels})
  assert (float(metrics['top1']), float(metrics['top5'])) == (2 / 8, 5 / 8)


def _numpy_eval(params, images, labels, mask):
  """The expected eval counts of normalized images: softmax averaged over crops, float64."""
  kernel, bias = (np.asarray(params['classifier'][k], np.float64) for k in ('kernel', 'bias'))
  logits = images.mean(axis=(-3, -2)) @ kernel + bias
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  if probs.ndim == 3:
    probs = probs.mean(axis=1)
  ranks = (probs > probs[np.arange(len(labels)), labels][:, None]).sum(-1)
  nll = -np.log(probs[np.arange(len(labels)), labels])
  return {'correct_top1': np.sum(mask * (ranks < 1)), 'correct_top5': np.sum(mask * (ranks < 5)),
          'loss_sum': np.sum(mask * nll), 'count': np.sum(mask)}


@pytest.mark.parametrize('crops', [None, 10])
def test_eval_step_averages_softmax_over_crops_and_counts_masked_in_examples(crops):
  config = _config(ema_decay=0.5)
  state, sharding, mesh = _linear_state(config)
  rng = np.random.default_rng(2)  # seed 2: top-1 < top-5 < count, so each count is tested
  params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), state.params)
  ema = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), state.params)
  state = state.replace(params=params, ema_params=ema)
  shape = (8, 4, 4, 3) if crops is None else (8, crops, 4, 4, 3)
  batch = {'image': rng.integers(0, 256, size=shape, dtype=np.uint8),
           'label': rng.integers(0, 7, 8).astype(np.int32),
           'mask': np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)}
  got = jax.device_get(steps.make_eval_step(mesh, sharding)(state, batch))
  images = _normalized(batch['image'], config)
  expected = _numpy_eval(ema, images, batch['label'], batch['mask'])  # EMA params
  assert set(got) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-5, err_msg=name)
  assert got['count'] == 6
  assert 0 < expected['correct_top1'] < expected['correct_top5'] < expected['count']
  assert not np.isclose(_numpy_eval(params, images, batch['label'],
                                    batch['mask'])['loss_sum'], expected['loss_sum'])


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
  """Two accumulated half batches update like one step on both; EMA follows updates."""
  # lr_decay_epochs 0.1: the rate drops at every update, so that the rate reported
  # at step 1 shows whether it is the schedule's at update 1 // 2 = 0, not at 1.
  overrides = dict(recipe='paper', optimizer='sgd', learning_rate=0.5, weight_decay=1e-3,
                   ema_decay=0.5, aux_weight=0.0, batch_size=4, lr_decay_epochs=0.1)
  accumulated, sharding_k, mesh = _linear_state(_config(grad_accum_steps=2, **overrides))
  whole, sharding_1, _ = _linear_state(_config(**overrides))
  step_k = steps.make_train_step(_config(grad_accum_steps=2, **overrides), mesh, sharding_k)
  step_1 = steps.make_train_step(_config(**overrides), mesh, sharding_1)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, size=(8, 4, 4, 3), dtype=np.uint8),
           'label': rng.integers(0, 7, 8).astype(np.int32)}
  halves = [jax.tree.map(lambda x, i=i: x[4 * i:4 * (i + 1)], batch) for i in range(2)]
  initial = jax.device_get(accumulated.params)
  accumulated, first = step_k(accumulated, halves[0])
  np.testing.assert_array_equal(first['update_norm'], 0.0)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(accumulated.params), initial)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(accumulated.ema_params), initial)
  accumulated, second = step_k(accumulated, halves[1])
  whole, reference = step_1(whole, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(accumulated.params), jax.device_get(whole.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(accumulated.ema_params), jax.device_get(whole.ema_params))
  np.testing.assert_allclose(second['update_norm'], reference['update_norm'], rtol=1e-5)
  assert first['learning_rate'] == second['learning_rate'] == reference['learning_rate']
