"""Two processes through jax.distributed on 127.0.0.1, against one process: same result.

Each test starts fresh Python processes with a hard timeout, so a hang fails the
test instead of the CI. Each process gets 2 CPU devices (XLA_FLAGS); collectives
between processes use gloo.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 420


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def env(devices: int) -> dict[str, str]:
  return {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1', 'PYTHONPATH': str(ROOT)}


def run_all(commands: list[list[str]], devices: int) -> list[str]:
  """Runs the commands concurrently; fails if any fails or outlives TIMEOUT."""
  procs = [subprocess.Popen(c, cwd=ROOT, env=env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  outputs = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=TIMEOUT)
      outputs.append(out)
      assert proc.returncode == 0, out[-3000:]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return outputs


def test_two_processes_equal_one_process_with_as_many_devices(tmp_path):
  script = str(ROOT / 'tests' / 'multihost_step_check.py')
  address = f'127.0.0.1:{free_port()}'
  run_all([[sys.executable, script, str(tmp_path / f'p{i}.npz'), str(i), '2', address]
           for i in range(2)], devices=2)
  run_all([[sys.executable, script, str(tmp_path / 'single.npz'), '0', '1']], devices=4)
  p0, p1, single = (np.load(tmp_path / f) for f in ('p0.npz', 'p1.npz', 'single.npz'))
  assert int(p0['devices']) == int(single['devices']) == 4
  for key in single.files:
    np.testing.assert_array_equal(p0[key], p1[key])  # the two processes agree bit for bit
    # Same global batches and devices; only the reduction across processes (gloo)
    # may order the sums differently from one process's: float32 rounding.
    np.testing.assert_allclose(p0[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _train_command(workdir: pathlib.Path, data_dir: pathlib.Path, address: str,
                   process_id: int) -> list[str]:
  return [sys.executable, '-m', 'inception_jax', 'train', '--workdir', str(workdir),
          '--config.model=googlenet_tiny', '--config.model_options.width=0.125',
          f'--config.data_dir={data_dir}', '--config.batch_size=32',
          '--config.eval_batch_size=64', '--config.num_train_steps=8',
          '--config.warmup_epochs=0', '--config.deterministic_data=True',
          '--config.log_every_steps=1', '--config.eval_every_steps=8',
          '--config.checkpoint_every_steps=2', f'--config.coordinator_address={address}',
          '--config.num_processes=2', f'--config.process_id={process_id}',
          '--config.distributed_timeout_seconds=60']


def test_two_process_training_checkpoints_is_killed_and_resumes(tmp_path):
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'run'
  subprocess.run([sys.executable, '-c', 'import ml_collections; from inception_jax import '
                  'input_pipeline as p; c = ml_collections.ConfigDict(dict(dataset='
                  f'"sklearn_digits", data_dir="{data_dir}")); p._prepared_builder(c)'],
                 cwd=ROOT, env=env(1), check=True, timeout=TIMEOUT, capture_output=True)
  address = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen(_train_command(workdir, data_dir, address, i), cwd=ROOT, env=env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    for line in procs[0].stdout:  # only process 0 prints progress
      if line.startswith('step 5/'):
        break
    for proc in procs:
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=60)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and max(steps) >= 2, steps

  address = f'127.0.0.1:{free_port()}'
  outputs = run_all([_train_command(workdir, data_dir, address, i) for i in range(2)],
                    devices=2)
  assert f'resuming at step {max(steps)}' in outputs[0], outputs[0][-2000:]
  assert 'eval at step 8' in outputs[0]
  assert not any(line.startswith('step ') for line in outputs[1].splitlines())  # only 0 prints
  final = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert max(final) == 8
