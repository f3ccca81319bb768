"""A 2-process run stopped every way a pod's hosts are stopped, then resumed bit for bit.

Each launch starts `python -m inception_jax train` twice (one CPU device each,
`jax.distributed` on 127.0.0.1). One run goes through the scenarios in turn,
each launch resuming where the previous one stopped: SIGTERM to both processes
at once, to one only, to both three seconds apart, SIGKILL to both at a random
moment, and SIGTERM while a relaunch is still starting. Every SIGTERM must end
with both processes saving the same step and exiting 0; the last launch trains
to the end, and its final state must equal, bit for bit, that of an
uninterrupted 2-process run on the same deterministic data.

One chained run rather than one run per scenario: each launch costs a full
compile in process 1 (JAX's persistent cache is written by process 0 only, and
on CPU process 1 looks the program up under another key).
"""

import os
import pathlib
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from inception_jax.training import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 32
CHECKPOINT_EVERY = 4
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

  def wait_for_line(self, prefix: str, timeout: float = TIMEOUT) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        line = self._queue.get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        break
      if line.startswith(prefix):
        return line
    raise AssertionError(f'no line starting {prefix!r}:\n' + ''.join(self.lines)[-3000:])

  def output(self) -> str:
    return ''.join(self.lines)


class TwoProcessRun:
  """Both processes of one launch of `train` on the embedded digits."""

  def __init__(self, workdir: pathlib.Path, data_dir: pathlib.Path, env: dict[str, str]):
    address = f'127.0.0.1:{_free_port()}'
    env = {**env, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': (
        env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=1')}
    self.processes = [Process(self._command(workdir, data_dir, address, i), env)
                      for i in range(2)]

  @staticmethod
  def _command(workdir, data_dir, address, process_id) -> list[str]:
    return [sys.executable, '-m', 'inception_jax', 'train', '--workdir', str(workdir),
            '--config.model=googlenet_bn_shallow', f'--config.data_dir={data_dir}',
            '--config.image_size=32', '--config.batch_size=32', '--config.eval_batch_size=64',
            f'--config.num_train_steps={STEPS}', '--config.warmup_epochs=0',
            '--config.ema_decay=0.9', '--config.deterministic_data=True',
            '--config.log_every_steps=1', f'--config.eval_every_steps={STEPS}',
            f'--config.checkpoint_every_steps={CHECKPOINT_EVERY}',
            '--config.compilation_cache=False',  # the session's shared cache instead
            f'--config.coordinator_address={address}', '--config.num_processes=2',
            f'--config.process_id={process_id}', '--config.distributed_timeout_seconds=120']

  def signal(self, index: int, signum: int = signal.SIGTERM) -> None:
    if self.processes[index].proc.poll() is None:
      self.processes[index].proc.send_signal(signum)

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


def _stop_and_check(run: TwoProcessRun, signals) -> None:
  """Sends SIGTERM per `signals` ((delay s, process), ...); both must exit 0 in time."""
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


@pytest.fixture(scope='module')
def reference(tmp_path_factory, digits_data_dir, subprocess_env):
  """The final state of an uninterrupted 2-process run."""
  workdir = tmp_path_factory.mktemp('reference')
  run = TwoProcessRun(workdir, digits_data_dir, subprocess_env)
  assert run.wait() == [0, 0], run.processes[0].output()[-3000:]
  return checkpointing.load_raw(workdir / 'checkpoints' / str(STEPS)).state


def test_every_way_of_stopping_saves_one_agreed_step_and_resumes_bit_identical(
    reference, digits_data_dir, subprocess_env, tmp_path):
  workdir = tmp_path / 'run'

  def launch(resumes_at: int | None) -> TwoProcessRun:
    run = TwoProcessRun(workdir, digits_data_dir, subprocess_env)
    if resumes_at is not None:
      line = run.processes[0].wait_for_line('googlenet_bn_shallow on ')
      assert line.rstrip().endswith(f'resuming at step {resumes_at}'), line
    return run

  # SIGTERM to both hosts at the same moment, to one host only, and to one host then the
  # other three seconds later: each time one step agreed by both, saved, and a clean exit.
  saved = None
  for name, signals in (('both', ((0, 0), (0, 1))), ('one', ((0, 1),)),
                        ('staggered', ((0, 0), (3, 1)))):
    run = launch(saved)
    after = (saved or 0) + 3
    run.processes[0].wait_for_line(f'step {after}/')
    _stop_and_check(run, signals)
    newest = _newest_complete_step(workdir)
    print(f'{name}: saved step {newest}')
    assert after <= newest < STEPS, (name, newest)
    assert f'SIGTERM: saved a checkpoint at step {newest}' in run.processes[0].output()
    saved = newest

  # SIGKILL to both at a random moment after a step: the newest complete checkpoint stays.
  seed = int(os.environ.get('KILL_SEED', time.time_ns() % 10_000))
  rng = random.Random(seed)
  # (The first step of a launch prints no progress line: it is the warm-up.)
  kill_after, delay = saved + rng.randint(2, CHECKPOINT_EVERY + 1), rng.uniform(0, 0.5)
  print(f'KILL_SEED={seed}: SIGKILL {delay:.2f} s after step {kill_after}')
  run = launch(saved)
  run.processes[0].wait_for_line(f'step {kill_after}/')
  time.sleep(delay)
  for index in (0, 1):
    run.signal(index, signal.SIGKILL)
  run.wait()
  killed_at = _newest_complete_step(workdir)
  assert killed_at == saved or (killed_at % CHECKPOINT_EVERY == 0 and saved < killed_at < STEPS)

  # SIGTERM to one host while the relaunch is still starting: nothing trained, both exit 0.
  run = TwoProcessRun(workdir, digits_data_dir, subprocess_env)
  run.processes[0].wait_for_line('config ')
  _stop_and_check(run, ((0, 1),))
  assert not any(line.startswith('step ') for line in run.processes[0].lines)
  stopped = _newest_complete_step(workdir)
  assert stopped in (killed_at, killed_at + 1), (killed_at, stopped)

  # The last launch trains to the end: only process 0 prints, and the state is the
  # uninterrupted run's, every leaf bit for bit.
  run = launch(stopped)
  assert run.wait() == [0, 0], run.processes[0].output()[-3000:]
  assert f'eval at step {STEPS}:' in run.processes[0].output()
  assert not any(line.startswith('step ') for line in run.processes[1].lines)
  assert _newest_complete_step(workdir) == STEPS
  final = checkpointing.load_raw(workdir / 'checkpoints' / str(STEPS)).state
  assert jax.tree.structure(final) == jax.tree.structure(reference)
  assert {'params', 'batch_stats', 'opt_state', 'ema_params', 'step', 'rng'} <= set(reference)
  jax.tree.map(np.testing.assert_array_equal, final, reference)
