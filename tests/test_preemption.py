"""SIGTERM to any process of a 2-process run: both save one agreed step, exit 0, and resume.

Each scenario starts `python -m inception_jax train` twice (2 CPU devices each,
`jax.distributed` on 127.0.0.1), signals as a pod's hosts would be signalled, and
then relaunches both processes to the end: the final state must equal, bit for
bit, that of an uninterrupted 2-process run on the same deterministic data.
"""

import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from inception_jax import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 40
EXIT_WITHIN = 120  # seconds from the first signal to both processes' exit
TIMEOUT = 600

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Process:
  """A training process whose output lines are collected by a thread as they come."""

  def __init__(self, command: list[str], env: dict[str, str]):
    self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.lines.append(line)
      self._queue.put(line)
    self._queue.put(None)

  def wait_for_line(self, prefix: str, timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        line = self._queue.get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        break
      if line.startswith(prefix):
        return
    raise AssertionError(f'no line starting {prefix!r}:\n' + ''.join(self.lines)[-3000:])

  def output(self) -> str:
    return ''.join(self.lines)


class TwoProcessRun:
  """Both processes of one run of `train` on the embedded digits."""

  def __init__(self, workdir: pathlib.Path, data_dir: pathlib.Path, cache: pathlib.Path):
    address = f'127.0.0.1:{_free_port()}'
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
           'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1', 'PYTHONPATH': str(ROOT),
           'JAX_COMPILATION_CACHE_DIR': str(cache)}
    self.processes = [Process(self._command(workdir, data_dir, address, i), env)
                      for i in range(2)]

  @staticmethod
  def _command(workdir, data_dir, address, process_id) -> list[str]:
    return [sys.executable, '-m', 'inception_jax', 'train', '--workdir', str(workdir),
            '--config.model=googlenet_bn_tiny', f'--config.data_dir={data_dir}',
            '--config.image_size=32', '--config.batch_size=32', '--config.eval_batch_size=64',
            f'--config.num_train_steps={STEPS}', '--config.warmup_epochs=0',
            '--config.ema_decay=0.9', '--config.deterministic_data=True',
            '--config.log_every_steps=1', f'--config.eval_every_steps={STEPS}',
            '--config.checkpoint_every_steps=10', '--config.compilation_cache=False',
            f'--config.coordinator_address={address}', '--config.num_processes=2',
            f'--config.process_id={process_id}', '--config.distributed_timeout_seconds=60']

  def signal(self, index: int) -> None:
    if self.processes[index].proc.poll() is None:
      self.processes[index].proc.send_signal(signal.SIGTERM)

  def wait(self, timeout: float = TIMEOUT) -> list[int]:
    """The exit codes; kills what outlives `timeout`."""
    deadline = time.time() + timeout
    try:
      return [p.proc.wait(timeout=max(1, deadline - time.time())) for p in self.processes]
    except subprocess.TimeoutExpired:
      raise AssertionError('a process outlived the timeout:\n'
                           + '\n'.join(p.output()[-2000:] for p in self.processes)) from None
    finally:
      for p in self.processes:
        if p.proc.poll() is None:
          p.proc.kill()


def _state(workdir: pathlib.Path, step: int | None = None):
  path = workdir / 'checkpoints' / str(step) if step else workdir
  return checkpointing.load_raw(path).state


def _newest_complete_step(workdir: pathlib.Path) -> int:
  """The newest step, checked to hold both processes' shares of the state."""
  manager = checkpointing.create_manager(workdir / 'checkpoints', read_only=True)
  step = manager.latest_step()
  manager.close()
  assert step is not None
  state_dir = workdir / 'checkpoints' / str(step) / 'state'
  assert {p.name for p in state_dir.iterdir() if p.name.startswith('ocdbt.process_')} == {
      'ocdbt.process_0', 'ocdbt.process_1'}, sorted(state_dir.iterdir())
  return step


def _stop_and_check(run: TwoProcessRun, signals) -> int:
  """Sends `signals` ((delay s, process), ...), checks both exit 0 in time; the saved step."""
  first = time.time()
  for delay, index in signals:
    time.sleep(max(0.0, first + delay - time.time()))
    run.signal(index)
  codes = run.wait(timeout=EXIT_WITHIN + 30)
  seconds = time.time() - first
  outputs = [p.output() for p in run.processes]
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert seconds < EXIT_WITHIN, seconds
  print(f'signals {signals}: exit codes {codes} after {seconds:.1f} s')
  return seconds


@pytest.fixture(scope='module')
def setting(tmp_path_factory):
  """The prepared data set, a shared compilation cache and an uninterrupted run's state."""
  root = tmp_path_factory.mktemp('preemption')
  data_dir, cache = root / 'tfds', root / 'xla_cache'
  subprocess.run([sys.executable, '-c', 'import ml_collections; from inception_jax import '
                  'input_pipeline as p; c = ml_collections.ConfigDict(dict(dataset='
                  f'"sklearn_digits", data_dir="{data_dir}")); p._prepared_builder(c)'],
                 cwd=ROOT, check=True, timeout=TIMEOUT, capture_output=True)
  run = TwoProcessRun(root / 'reference', data_dir, cache)
  assert run.wait() == [0, 0], run.processes[0].output()[-3000:]
  return data_dir, cache, _state(root / 'reference', STEPS)


def _resume_to_the_end(workdir, data_dir, cache, saved: int, reference) -> None:
  run = TwoProcessRun(workdir, data_dir, cache)
  codes = run.wait()
  output = run.processes[0].output()
  assert codes == [0, 0], output[-3000:]
  assert f'resuming at step {saved}' in output, output[-3000:]
  final = _state(workdir, STEPS)
  assert jax.tree.structure(final) == jax.tree.structure(reference)
  jax.tree.map(np.testing.assert_array_equal, final, reference)


@pytest.mark.parametrize('signals', [
    ((0, 0), (0, 1)),  # both hosts at the same moment
    ((0, 1),),  # one host only
    ((0, 0), (3, 1)),  # one host, then the other three seconds later
], ids=['both', 'one', 'staggered'])
def test_sigterm_saves_one_agreed_step_and_resumes_bit_identical(setting, tmp_path, signals):
  data_dir, cache, reference = setting
  run = TwoProcessRun(tmp_path / 'run', data_dir, cache)
  run.processes[0].wait_for_line('step 15/')
  _stop_and_check(run, signals)
  saved = _newest_complete_step(tmp_path / 'run')
  print(f'saved step {saved}')
  assert 15 <= saved < STEPS, saved
  assert f'SIGTERM: saved a checkpoint at step {saved}' in run.processes[0].output()
  _resume_to_the_end(tmp_path / 'run', data_dir, cache, saved, reference)


def test_sigterm_while_a_resumed_run_starts(setting, tmp_path):
  data_dir, cache, reference = setting
  run = TwoProcessRun(tmp_path / 'run', data_dir, cache)
  run.processes[0].wait_for_line('step 12/')
  for p in run.processes:
    p.proc.send_signal(signal.SIGKILL)
  run.wait()
  saved = _newest_complete_step(tmp_path / 'run')
  assert saved == 10, saved

  run = TwoProcessRun(tmp_path / 'run', data_dir, cache)
  run.processes[0].wait_for_line('config ')  # started, not yet at its first step
  _stop_and_check(run, ((0, 1),))
  assert not any(line.startswith('step ') for line in run.processes[0].lines)
  stopped = _newest_complete_step(tmp_path / 'run')
  print(f'newest step {stopped}')
  assert stopped in (saved, saved + 1), stopped
  _resume_to_the_end(tmp_path / 'run', data_dir, cache, stopped, reference)
