"""The training step on 8 (emulated CPU) devices equals the step on 1.

`multidevice_step_check.py` runs in subprocesses, since the number of CPU devices
is fixed when JAX starts.

Tolerance: the 8-device program sums each device's share of a batch reduction
(loss, gradients, BatchNorm moments) and then adds the 8 partial sums, so float32
additions happen in another order than on one device. The rounding differences
(~1e-7 relative per reduction) grow through the network: with each 8-device step
started from the 1-device run's state (see the script), the parameters differ by
at most 1.5e-8 (googlenet_tiny) and 1.8e-7 (googlenet_bn_tiny, whose BatchNorms
amplify them), i.e. 2e-6 and 1.3e-6 of how far the two steps moved them. The test
allows 1e-3 of that movement. A real mismatch is far larger:
another dropout key (the control run) changes the parameters by about 60 % of the
movement, and one device's BatchNorm statistics differ from the global ones by
about their own size (checked directly below).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'tests' / 'multidevice_step_check.py'
RELATIVE_TOLERANCE = 1e-3  # of the parameter change, see above
TIMEOUT_S = 600
MODELS = ('googlenet_tiny', 'googlenet_bn_shallow')

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def report() -> dict:
  """The script's reports, one subprocess per model run side by side (compiling dominates)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                        ' --xla_force_host_platform_device_count=8').strip(),
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
  processes = [subprocess.Popen([sys.executable, str(SCRIPT), model], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for model in MODELS]
  merged = {}
  try:
    for process in processes:
      stdout, stderr = process.communicate(timeout=TIMEOUT_S)
      assert process.returncode == 0, stderr[-5000:]
      merged.update(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for process in processes:
      process.kill()
  return merged


@pytest.mark.parametrize('model', MODELS)
def test_eight_devices_give_the_one_device_step(report, model):
  result = report[model]
  tolerance = RELATIVE_TOLERANCE * result['param_change']
  for part in ('params', 'ema_params', 'batch_stats'):
    assert result[part] < tolerance, (part, result)
  assert result['metrics_relative'] < 1e-4, result
  assert result['params_with_another_dropout_key'] > 10 * tolerance, result  # the control
  assert {'loss', 'main_loss', 'aux1_loss', 'aux2_loss'} <= set(result['metric_names'])
  assert result['state_replicated']


def test_batchnorm_statistics_are_over_the_global_batch(report):
  result = report['googlenet_bn_shallow']
  scale = result['bn_running_mean_scale']  # how far one step moved the running mean
  assert result['bn_vs_global_batch'] < 1e-5 * scale, result
  # One device's share (2 of the 16 images) gives clearly different statistics.
  assert result['bn_vs_first_device_share'] > 0.5 * scale, result


def test_batch_not_divisible_by_the_devices_fails_clearly(report):
  message = report['indivisible_batch_error']
  assert 'batch_size=12' in message and 'the 8 devices' in message, message
  assert 'multiple of 8' in message and 'e.g. 16' in message, message
