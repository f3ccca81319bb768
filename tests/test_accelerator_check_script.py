"""experiments/accelerator_check.sh on a CPU: its dry run passes, and without
--dry-run it refuses at once instead of running for minutes."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'experiments' / 'accelerator_check.sh'


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHON': sys.executable, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run(['bash', str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_dry_run_checks_every_step_on_cpu():
  done = _run('--dry-run', timeout=240)
  out = done.stdout
  assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
  for step in ("preflight: JAX's backend", 'parse: train --help',
               "parse: the default config, the benchmark's cases and peaks",
               'accelerator tests collect and skip on CPU',
               'benchmark pipeline on CPU, tiny model',
               'merge the benchmark reports'):
    assert f': {step}: ok (' in out, f'step {step!r} missing or not ok:\n{out}'
  assert 'FAILED' not in out and 'TIMED OUT' not in out
  assert 'merged 1 report(s), 1 rows' in out  # float32 infer, jax xla
  assert '--peak-tflops bfloat16=989,float32=494' in out  # the real command it would run
  assert 'all steps passed' in out


def test_without_dry_run_on_cpu_refuses_at_once():
  done = _run(timeout=60)
  assert done.returncode != 0
  assert "no accelerator: JAX's backend is cpu; use --dry-run" in done.stderr
  assert 'accelerator tests' not in done.stdout  # stopped before the first real step


USAGE = 'usage: experiments/accelerator_check.sh'


@pytest.mark.parametrize('args, says', [
    (['--bogus'], ['unknown argument: --bogus', USAGE]),
    (['--torch-modes', 'jit'], ["bad --torch-modes 'jit': eager, compile or eager,compile"]),
    (['--peak-tflops'], [USAGE]),  # its value missing
], ids=['unknown', 'bad-torch-modes', 'missing-value'])
def test_bad_arguments_print_the_usage(args, says):
  """Exit 2 with the message for that argument, before any step runs."""
  done = _run(*args, timeout=30)
  assert done.returncode == 2
  for message in says:
    assert message in done.stderr, done.stderr
  assert '== step' not in done.stdout
