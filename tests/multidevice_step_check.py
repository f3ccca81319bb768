"""Runs the training step on 1 device and on 8, and prints what differs as JSON.

Usage: python multidevice_step_check.py [MODEL ...] (default: googlenet_tiny and
googlenet_bn_shallow), with XLA_FLAGS=--xla_force_host_platform_device_count=8
JAX_PLATFORMS=cpu.
`tests/test_train_multidevice.py` runs it in subprocesses, one per model: the
device count is fixed when JAX starts, so it cannot change inside pytest.

For each model, one state is created on the 8-device mesh and copied to a
1-device mesh; the 1-device run takes STEPS steps on fixed global batches (16
images, 2 per device), and each 8-device step starts from the state the 1-device
run had before that step. Comparing steps from the same state measures the
step's own difference; two free-running trajectories can part for a discrete
reason (a 1e-7 rounding difference in the parameters can flip a discrete choice,
such as a max-pool window's argmax or a ReLU's sign, and send a gradient
elsewhere): measured for googlenet_bn_tiny, 2.7e-4 after two free-running steps,
1.4e-7 from the same state. The report has the largest absolute differences
between the two runs over the steps (parameters, BatchNorm statistics, EMA;
metrics relative to max(1, |value|)),
the largest parameter change and the difference a changed dropout key makes (for
scale), and, for BatchNorm models, the first BatchNorm layer's running mean
after one step against the same statistic computed by hand on the whole batch
and on one device's share of it.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import config as config_lib
from inception_jax import sharding as sharding_lib
from inception_jax import xla_options
from inception_jax.model import googlenet
from inception_jax.training import steps

MODELS = ('googlenet_tiny', 'googlenet_bn_shallow')
BATCH_SIZE, IMAGE_SIZE, NUM_CLASSES, STEPS = 16, 32, 5, 2
BN_MOMENTUM = 0.9  # layers.ConvReLU's BatchNorm: new = 0.9 * old + 0.1 * batch statistic


def _config(model: str):
  config = config_lib.get_base_config()
  config.update(model=model, batch_size=BATCH_SIZE, recipe='paper', learning_rate=0.01,
                ema_decay=0.9, label_smoothing=0.1, aux_weight=0.3)
  return config


def _max_abs_diff(a, b) -> float:
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(
      np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b))
  return max(diffs, default=0.0)


def _conv1_mean(params, images: np.ndarray) -> np.ndarray:
  """conv1's per-channel mean over batch and space (googlenet_bn's conv1 has no bias)."""
  conv = jax.lax.conv_general_dilated(
      jnp.asarray(images), params['conv1']['conv']['kernel'], (2, 2), [(3, 3), (3, 3)],
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST)
  return np.asarray(conv.mean(axis=(0, 1, 2)))


def _run(step, state, mesh, batches) -> list:
  """Host copies of (state, metrics) after each of `batches`."""
  history = []
  for batch in batches:
    state, metrics = step(state, jax.device_put(batch, sharding_lib.batch_sharding(mesh)))
    history.append(jax.device_get((state, metrics)))
  return history


def compare(model_name: str) -> dict[str, float]:
  """Runs STEPS steps on 1 device and each of them on 8 from the same state; returns the
  largest differences over the steps.

  A third run, on 8 devices with another dropout key, shows how large a real
  difference would be.
  """
  config = _config(model_name)
  model = googlenet.create_model(model_name, num_classes=NUM_CLASSES,
                              ops=config.model_options.ops)
  mesh8, mesh1 = sharding_lib.create_mesh(), sharding_lib.create_mesh(jax.devices()[:1])
  state8, sharding8 = steps.create_train_state(
      config, model, (1, IMAGE_SIZE, IMAGE_SIZE, 3), mesh8, steps_per_epoch=10)
  replicated = all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8
                   for x in jax.tree.leaves(state8))
  initial = jax.device_get(state8)
  sharding1 = jax.tree.map(lambda _: sharding_lib.replicated(mesh1), sharding8)
  other_key = initial.replace(rng=jax.random.key_data(jax.random.key(config.seed + 1)))
  step8 = steps.make_train_step(config, mesh8, sharding8, xla_options.FAST_COMPILE)
  step1 = steps.make_train_step(config, mesh1, sharding1, xla_options.FAST_COMPILE)
  rng = np.random.default_rng(0)
  # Each image's own brightness (a random offset) makes a device's share of the batch
  # clearly unlike the whole batch, so statistics over the wrong one would show.
  shape = (BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3)
  batches = [{'image': (rng.integers(0, 128, (BATCH_SIZE, 1, 1, 1))
                        + rng.integers(0, 128, shape)).astype(np.uint8),
              'label': rng.integers(0, NUM_CLASSES, BATCH_SIZE).astype(np.int32)}
             for _ in range(STEPS)]
  on1 = _run(step1, jax.device_put(initial, sharding1), mesh1, batches)
  before = [initial, *(state for state, _ in on1[:-1])]
  on8 = [_run(step8, jax.device_put(state, sharding8), mesh8, [batch])[0]
         for state, batch in zip(before, batches)]
  control = _run(step8, jax.device_put(other_key, sharding8), mesh8, batches)
  pairs = list(zip(on8, on1))

  def worst(part: str) -> float:
    return max(_max_abs_diff(getattr(a, part), getattr(b, part)) for (a, _), (b, _) in pairs)

  state1, metrics1 = on1[-1]
  report = {
      'params': worst('params'),
      'ema_params': worst('ema_params'),
      'batch_stats': worst('batch_stats'),
      'metrics_relative': max(float(abs(m8[k] - m1[k]) / max(1.0, abs(m1[k])))
                              for (_, m8), (_, m1) in pairs for k in m8),
      'metric_names': sorted(metrics1),
      'param_change': _max_abs_diff(state1.params, initial.params),
      'params_with_another_dropout_key': _max_abs_diff(control[-1][0].params, state1.params),
      'state_replicated': replicated,
  }
  if initial.batch_stats:
    images = ((batches[0]['image'] - np.float32(config.mean_rgb))
              / np.float32(config.std_rgb))  # the model's inputs, as the step normalizes
    report.update(_first_bn_layer(initial, on8[0][0], images))
  return report


def _first_bn_layer(initial, after_one_step, images: np.ndarray) -> dict[str, float]:
  """Step 1's running mean of conv1/bn against hand-computed global and per-device ones."""
  running = np.asarray(after_one_step.batch_stats['conv1']['bn']['mean'])
  start = np.asarray(initial.batch_stats['conv1']['bn']['mean'])
  expected_global = BN_MOMENTUM * start + (1 - BN_MOMENTUM) * _conv1_mean(initial.params, images)
  per_device = BATCH_SIZE // jax.device_count()
  expected_device0 = BN_MOMENTUM * start + (1 - BN_MOMENTUM) * _conv1_mean(
      initial.params, images[:per_device])
  return {'bn_vs_global_batch': float(np.max(np.abs(running - expected_global))),
          'bn_vs_first_device_share': float(np.max(np.abs(running - expected_device0))),
          'bn_running_mean_scale': float(np.max(np.abs(running - start)))}


def indivisible_batch_error() -> str:
  """The message make_train_step gives for a batch of 12 on 8 devices."""
  config = _config('googlenet_tiny')
  config.batch_size = 12
  try:
    steps.make_train_step(config, sharding_lib.create_mesh(), None)
  except ValueError as error:
    return str(error)
  return ''


def main(model_names: list[str]) -> None:
  if jax.device_count() != 8:
    sys.exit(f'expected 8 devices, found {jax.device_count()}: run with '
             'XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu')
  report = {name: compare(name) for name in model_names or MODELS}
  report['indivisible_batch_error'] = indivisible_batch_error()
  print(json.dumps(report))


if __name__ == '__main__':
  main(sys.argv[1:])
