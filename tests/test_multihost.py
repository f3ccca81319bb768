"""Two processes through jax.distributed on 127.0.0.1, against one process: same result.

(Multi-process training through the command line, killed and resumed, is in
test_preemption.py.)

Each test starts fresh Python processes with a hard timeout, so a hang fails the
test instead of the CI. Each process gets 2 CPU devices (XLA_FLAGS); collectives
between processes use gloo.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 420

pytestmark = pytest.mark.slow


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def env(devices: int) -> dict[str, str]:
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return {**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1',
          'PYTHONPATH': str(ROOT)}


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
