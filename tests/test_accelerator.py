"""Checks that need an accelerator: the training step on a GPU or TPU against the CPU.

Every test here is marked `accelerator` and is skipped unless JAX's default
backend is 'gpu' or 'tpu' (on a CPU-only machine the module collects and skips
in a moment, before any model is built). Run them on a machine with one:

  python -m pytest -q -n 0 -m accelerator tests/test_accelerator.py  # one process: one owner of the device

or through `experiments/accelerator_check.sh`, which also trains and benchmarks.
Setting INCEPTION_JAX_ACCELERATOR_TESTS_ON_CPU=1 runs them with the CPU standing
in for the accelerator: the comparisons are then trivial, but the test code
itself is exercised (how the bfloat16 bound below was set; ~10 min on 2 cores).

What is checked, all on tiny models (width 1/8) and 32x32 images:
  (a) one training step (googlenet_bn_tiny and googlenet_tiny; SGD, same initial
      state, batch and dropout key) on the accelerator equals the CPU's;
  (b) the kernel sets 'xla' and 'fast' give the same logits, loss, gradients and
      BatchNorm statistics on the accelerator;
  (c) a bfloat16 step is finite, really computes in bfloat16, and its loss and
      update are close to float32's;
  (d) the `jax.export` artifact of a tiny checkpoint runs on the accelerator
      (through its 'cuda' or 'tpu' lowering) and gives the in-process logits.

Precision. On GPUs, float32 matrix products and convolutions run in TF32 (10-bit
mantissa, relative error ~5e-4 per product) unless asked otherwise, and on TPUs
in bfloat16 passes. Differences of that size, carried through ~60 layers forward
and backward and through BatchNorm on batches of 8, would need tolerances loose
enough to let real bugs through (a wrong padding, a transposed kernel, a missing
term shift the results by far more, but a broken reduction order in one layer
may not). So the float32 comparisons (a, b, d) run under
`jax.default_matmul_precision('highest')` (true float32 on both sides); what is
left are summation-order and algorithm differences (cuDNN's choice of
convolution algorithm, tree vs sequential reductions), ~1e-6 relative per
layer. Tolerances are normwise relative errors per array (||got - want|| /
||want||), which, unlike elementwise ones, do not trip on the few near-zero
entries whose relative error is large by nature.
"""

import functools
import math
import os
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from inception_jax import config as config_lib
from inception_jax import sharding as sharding_lib
from inception_jax import xla_options
from inception_jax.model import googlenet
from inception_jax.training import steps

pytestmark = pytest.mark.accelerator

ACCELERATORS = ('gpu', 'tpu')
ON_CPU_ENV = 'INCEPTION_JAX_ACCELERATOR_TESTS_ON_CPU'
NUM_CLASSES = 5
BATCH = 8
IMAGE_SIZE = 32
IMAGE_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE, 3)
MODELS = ('googlenet_bn_tiny', 'googlenet_tiny')

# Tolerances (normwise relative error per array unless said otherwise).
# (a) accelerator vs CPU, float32 at 'highest' precision, one SGD step. The
# loss is a scalar after one forward pass: ~1e-6 expected, 1e-4 allowed. The
# update (new - old parameters, = lr * gradient with momentum's first step)
# goes through the backward pass and BatchNorm's 1/std on batches of 8: 1e-3.
STEP_LOSS_RTOL = 1e-4
STEP_UPDATE_TOL = 1e-3
STEP_BATCH_STATS_TOL = 1e-4
# (b) 'xla' vs 'fast' on the accelerator, float32 at 'highest' precision: the
# same arithmetic in another order (a 1x1 convolution as a matrix product, the
# three 1x1 branches as one product, the hand-written BatchNorm+ReLU gradient).
OPS_LOGITS_TOL = 1e-4
OPS_GRAD_TOL = 1e-3
# (c) bfloat16 vs float32 (the same initial state and batch): bfloat16 keeps 8
# mantissa bits (relative rounding 2^-9 ~ 2e-3 per value); the loss of the
# random-init model, a mean over 8 examples of 3 heads' cross-entropies, is
# expected to move by a few 1e-3 relative (not measured separately). The bound is 5 % of the float32 loss. The update
# (lr * gradient) is noisier: BatchNorm over batches of 8 divides by standard
# deviations computed in bfloat16; its cosine with the float32 update was 0.78
# with XLA's CPU backend standing in (2 cores, INCEPTION_JAX_ACCELERATOR_TESTS_ON_CPU=1),
# where an unrelated direction gives ~0 and a sign error < 0: it must exceed 0.5.
BF16_LOSS_RTOL = 0.05
BF16_UPDATE_COSINE = 0.5
# (d) the exported artifact vs the in-process forward pass on the same device,
# both float32 at 'highest' precision: the same StableHLO, compiled twice.
EXPORT_LOGITS_TOL = 1e-5


def _rel_err(got, want) -> float:
  """||got - want|| / ||want||, in float64 (0 when both are 0)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  diff, norm = np.linalg.norm(got - want), np.linalg.norm(want)
  return float(diff / norm) if norm else float(diff)


def _assert_trees_close(got, want, tol: float, what: str) -> None:
  """Every leaf of `got` within normwise `tol` of `want`'s; names the worst leaves."""
  got_leaves = googlenet.named_leaves(jax.device_get(got))
  want_leaves = googlenet.named_leaves(jax.device_get(want))
  assert got_leaves.keys() == want_leaves.keys(), what
  errors = {name: _rel_err(got_leaves[name], want_leaves[name]) for name in want_leaves}
  worst = sorted(errors.items(), key=lambda item: -item[1])[:5]
  assert all(math.isfinite(e) and e <= tol for e in errors.values()), (
      f'{what}: normwise relative error above {tol:g} (worst: '
      + ', '.join(f'{name} {e:.2e}' for name, e in worst) + ')')


@pytest.fixture(scope='module', autouse=True)
def accelerator():
  """The accelerator (the first device of JAX's default backend); skips without one.

  A fixture rather than a skipif at import, so that collecting this module does
  not start JAX's backends (other modules set XLA flags before that happens).
  """
  backend = jax.default_backend()
  if backend not in ACCELERATORS and os.environ.get(ON_CPU_ENV) != '1':
    pytest.skip(f"no accelerator: JAX's default backend is {backend}; these tests need "
                "'gpu' or 'tpu'")
  return jax.devices()[0]


@pytest.fixture(scope='module')
def cpu():
  try:
    return jax.devices('cpu')[0]
  except RuntimeError as e:
    pytest.fail(f'the CPU reference needs JAX\'s CPU backend ({e}); do not leave it out of '
                'JAX_PLATFORMS (e.g. JAX_PLATFORMS=cuda,cpu)')


def _config(model: str) -> ml_collections.ConfigDict:
  config = config_lib.get_base_config()
  config.update(dict(model=model, batch_size=BATCH, optimizer='sgd', learning_rate=0.1,
                     momentum=0.9, weight_decay=0.0, warmup_epochs=0.0, num_train_steps=100,
                     ema_decay=0.0, aux_weight=0.3))
  return config


def _model(name: str, **options) -> googlenet.GoogLeNet:
  return googlenet.create_model(name, num_classes=NUM_CLASSES, **{'ops': 'xla', **options})


def _batch() -> dict[str, np.ndarray]:
  pixels = np.random.default_rng(1).integers(0, 256, (BATCH, *IMAGE_SHAPE[1:]), np.uint8)
  return {'image': pixels, 'label': np.arange(BATCH, dtype=np.int32) % NUM_CLASSES}


def _mesh(device) -> jax.sharding.Mesh:
  return sharding_lib.create_mesh([device])


def _initial_state(config, model, cpu) -> steps.TrainState:
  """The initial state (seed 0) as host arrays, initialized on the CPU."""
  state, _ = steps.create_train_state(config, model, IMAGE_SHAPE, _mesh(cpu), 100)
  return jax.device_get(state)


def _step(config, host_state: steps.TrainState, device, compiler_options=None):
  """One compiled training step on `device` from `host_state` (left untouched).

  Returns (host new state, host metrics, the lowered step).
  """
  mesh = _mesh(device)
  state = jax.device_put(host_state, sharding_lib.replicated(mesh))
  batch = jax.device_put(_batch(), sharding_lib.batch_sharding(mesh))
  step = steps.make_train_step(config, mesh, sharding_lib.replicated(mesh), compiler_options)
  lowered = step.lower(state, batch)
  new_state, metrics = lowered.compile()(state, batch)
  return jax.device_get(new_state), jax.device_get(metrics), lowered


def _update(new: steps.TrainState, old: steps.TrainState):
  return jax.tree.map(lambda n, o: np.asarray(n, np.float64) - np.asarray(o, np.float64),
                      new.params, old.params)


@functools.cache
def _float32_steps(name: str) -> types.SimpleNamespace:
  """One float32 step at 'highest' precision of a tiny model on the CPU and on the
  accelerator, from the same initial state (initialized on the CPU); computed once."""
  accelerator, cpu = jax.devices()[0], jax.devices('cpu')[0]
  config = _config(name)
  initial = _initial_state(config, _model(name), cpu)
  with jax.default_matmul_precision('highest'):
    # The CPU reference compiles without XLA's backend optimizations (3x faster
    # to compile; same float32 arithmetic); the accelerator with the defaults
    # training uses (`xla_options.for_model`).
    reference = _step(config, initial, cpu, xla_options.FAST_COMPILE)
    on_accelerator = _step(config, initial, accelerator)
  return types.SimpleNamespace(name=name, config=config, initial=initial, cpu=reference,
                               accelerator=on_accelerator)


@pytest.fixture(params=MODELS)
def float32_steps(request, accelerator, cpu):  # pylint: disable=unused-argument
  return _float32_steps(request.param)


# (a) The training step on the accelerator equals the CPU's.


def test_training_step_on_the_accelerator_equals_the_cpu_reference(float32_steps, accelerator):
  initial = float32_steps.initial
  (cpu_state, cpu_metrics, _), (acc_state, acc_metrics, _) = (float32_steps.cpu,
                                                              float32_steps.accelerator)
  assert int(acc_state.step) == 1
  for name in ('loss', 'main_loss', 'aux1_loss', 'aux2_loss'):
    assert _rel_err(acc_metrics[name], cpu_metrics[name]) <= STEP_LOSS_RTOL, (
        name, float(acc_metrics[name]), float(cpu_metrics[name]))
  assert _rel_err(acc_metrics['grad_norm'], cpu_metrics['grad_norm']) <= STEP_UPDATE_TOL
  _assert_trees_close(_update(acc_state, initial), _update(cpu_state, initial),
                      STEP_UPDATE_TOL, f'{float32_steps.name} update on {accelerator.platform}')
  if float32_steps.name == 'googlenet_bn_tiny':
    assert acc_state.batch_stats, 'googlenet_bn_tiny has BatchNorm statistics'
    _assert_trees_close(acc_state.batch_stats, cpu_state.batch_stats, STEP_BATCH_STATS_TOL,
                        'BatchNorm statistics')
  # The update is not trivially equal: the step moved every parameter array.
  assert all(np.any(u != 0) for u in jax.tree.leaves(_update(acc_state, initial)))


# (b) The two kernel sets agree on the accelerator.


def _loss_and_grads(model: googlenet.GoogLeNet, host_state: steps.TrainState, device):
  """(loss, logits, batch_stats, grads) of the training forward pass on `device`."""
  batch = jax.device_put(_batch(), device)
  params = jax.device_put(host_state.params, device)
  batch_stats = jax.device_put(host_state.batch_stats, device)
  key = jax.random.fold_in(jax.random.wrap_key_data(jnp.asarray(host_state.rng)), 0)

  def loss_fn(params):
    output, updated = model.apply(googlenet.model_variables(params, batch_stats),
                                  host_state.model_input(batch['image']), train=True,
                                  rngs={'dropout': key}, mutable=['batch_stats'])
    loss, _ = steps.classification_loss(output, batch['label'], 0.3)
    return loss, (output.logits, updated.get('batch_stats', {}))

  (loss, (logits, new_stats)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params)
  return jax.device_get((loss, logits, new_stats, grads))


@pytest.mark.parametrize('name', MODELS)
def test_xla_and_fast_kernels_agree_on_the_accelerator(name, accelerator, cpu):
  config = _config(name)
  initial = _initial_state(config, _model(name), cpu)
  with jax.default_matmul_precision('highest'):
    xla = _loss_and_grads(_model(name, ops='xla'), initial, accelerator)
    fast = _loss_and_grads(_model(name, ops='fast'), initial, accelerator)
  (xla_loss, xla_logits, xla_stats, xla_grads) = xla
  (fast_loss, fast_logits, fast_stats, fast_grads) = fast
  assert _rel_err(fast_loss, xla_loss) <= OPS_LOGITS_TOL, (float(fast_loss), float(xla_loss))
  assert _rel_err(fast_logits, xla_logits) <= OPS_LOGITS_TOL, _rel_err(fast_logits, xla_logits)
  _assert_trees_close(fast_grads, xla_grads, OPS_GRAD_TOL, f'{name} gradients, fast vs xla')
  if xla_stats:
    _assert_trees_close(fast_stats, xla_stats, OPS_LOGITS_TOL, 'BatchNorm statistics')


# (c) bfloat16.

_MATRIX_OP = re.compile(r'stablehlo\.(convolution|dot_general)\b.*$', re.MULTILINE)


def test_bfloat16_step_is_finite_computes_in_bfloat16_and_is_close_to_float32(
    accelerator, cpu):  # pylint: disable=unused-argument
  float32_steps = _float32_steps('googlenet_bn_tiny')  # BatchNorm in bfloat16 too
  config = _config(float32_steps.name)
  bf16_model = _model(float32_steps.name, dtype='bfloat16')
  initial = float32_steps.initial.replace(apply_fn=bf16_model.apply)
  # Default precision, as training runs (bfloat16 operands are not affected).
  bf16_state, bf16_metrics, lowered = _step(config, initial, accelerator)
  _, f32_metrics, _ = float32_steps.accelerator

  # The model's dtype reached the compiled step: every convolution and matrix
  # product of the forward and backward passes takes bfloat16 operands.
  lines = [m.group(0) for m in _MATRIX_OP.finditer(lowered.as_text())]
  assert len(lines) > 50, f"expected GoogLeNet's convolutions, found {len(lines)}"
  not_bf16 = [line for line in lines if 'bf16' not in line]
  assert not not_bf16, f'{len(not_bf16)} of {len(lines)} matrix ops not in bfloat16: {not_bf16[:3]}'

  for name, value in bf16_metrics.items():
    assert np.isfinite(value), (name, value)
  for leaf in jax.tree.leaves(bf16_state.params):
    assert leaf.dtype == np.float32 and np.all(np.isfinite(leaf))  # params stay float32
  loss, reference = float(bf16_metrics['loss']), float(f32_metrics['loss'])
  # Close to float32's, but not equal: equal would mean the dtype was ignored.
  assert loss != reference
  assert abs(loss - reference) <= BF16_LOSS_RTOL * reference, (loss, reference)
  bf16_update = np.concatenate([u.ravel() for u in jax.tree.leaves(
      _update(bf16_state, float32_steps.initial))])
  f32_update = np.concatenate([u.ravel() for u in jax.tree.leaves(
      _update(float32_steps.accelerator[0], float32_steps.initial))])
  cosine = bf16_update @ f32_update / (np.linalg.norm(bf16_update) * np.linalg.norm(f32_update))
  assert cosine > BF16_UPDATE_COSINE, cosine


# (d) The exported artifact on the accelerator.


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A googlenet_bn_tiny run directory at 32x32 with random weights (BN statistics too)."""
  # Imported here: these pull in TensorFlow (seconds), needed by this test alone.
  from inception_jax.configs import default  # pylint: disable=import-outside-toplevel
  from helpers import random_variables  # pylint: disable=import-outside-toplevel
  from inception_jax.serving import convert  # pylint: disable=import-outside-toplevel
  from inception_jax.training import rundir
  config = default.get_config()
  config.model = 'googlenet_bn_tiny'
  config.model_options.width = None
  config.image_size = IMAGE_SIZE
  classes = tuple(f'class {i}' for i in range(NUM_CLASSES))
  variables = random_variables(rundir.build_model(config, len(classes)), IMAGE_SIZE)
  return convert.write_run(tmp_path_factory.mktemp('run'), config, variables, classes)


def test_exported_artifact_runs_on_the_accelerator_and_gives_in_process_logits(
    tiny_run, accelerator):
  from inception_jax.serving import evaluation, export  # pylint: disable=import-outside-toplevel
  from inception_jax.training import rundir
  loaded = evaluation.load_model(tiny_run, rundir.load_config(tiny_run))
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
  mean = np.asarray(loaded.config.mean_rgb, np.float32)
  std = np.asarray(loaded.config.std_rgb, np.float32)
  with jax.default_matmul_precision('highest'):
    exported = jax.export.deserialize(export.export_model(loaded, 'uint8').serialize())
    variables = jax.device_put(loaded.variables, accelerator)
    forward = jax.jit(lambda v, x: loaded.model.apply(v, (x.astype(jnp.float32) - mean) / std,
                                                      train=False).logits)
    expected = forward(variables, jax.device_put(pixels, accelerator))
  platform = {'gpu': 'cuda'}.get(accelerator.platform, accelerator.platform)
  assert platform in exported.platforms, (platform, exported.platforms)
  got = exported.call(jax.device_put(pixels, accelerator))
  assert got.devices() == {accelerator}, got.devices()
  assert got.shape == (3, NUM_CLASSES) and got.dtype == jnp.float32
  assert _rel_err(got, expected) <= EXPORT_LOGITS_TOL, _rel_err(got, expected)
  # Another batch size through the same artifact (its batch dimension is symbolic).
  got_one = exported.call(jax.device_put(pixels[:1], accelerator))
  assert _rel_err(got_one, np.asarray(expected)[:1]) <= EXPORT_LOGITS_TOL
