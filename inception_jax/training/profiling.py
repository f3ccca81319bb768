"""A `jax.profiler` trace of a range of training steps, and the compiled step's memory.

The trace goes where TensorBoard's profile plugin looks for it,
`<workdir>/tensorboard/plugins/profile/<date>/`, and opens in TensorBoard or in
Perfetto (ui.perfetto.dev, the `perfetto_trace.json.gz` file). A remote work directory
(gs://) is traced into a local temporary folder first and copied up when the
trace stops, as the metric writer does with its event files.
"""

import os
import pathlib
import shutil
import tempfile
from typing import Any

from etils import epath
import jax

from inception_jax import paths
from inception_jax.training import metric_logging


class StepProfiler:
  """Starts a trace before step `first` and stops it after step `last` (both included).

  A resumed run that starts inside the range traces from its first step.
  """

  def __init__(self, steps: tuple[int, int] | None, workdir: epath.Path):
    self.steps = steps
    self.workdir = workdir
    self._local: str | None = None  # the folder being traced into
    self._done = False

  def before_step(self, step: int) -> None:
    """Starts the trace if `step` is the first one of the range this run reaches."""
    if self.steps is None or self._done or self._local is not None:
      return
    first, last = self.steps
    if first <= step <= last:
      events = self.workdir / metric_logging.TENSORBOARD_DIR
      self._local = (tempfile.mkdtemp(prefix='inception_jax_profile_')
                     if paths.is_remote(self.workdir) else os.fspath(events))
      jax.profiler.start_trace(self._local, create_perfetto_trace=True)

  def after_step(self, step: int, outputs: Any) -> bool:
    """Stops the trace once step `last` has finished on the device; True if it did."""
    if self._local is None or step < self.steps[1]:
      return False
    jax.block_until_ready(outputs)
    self.close()
    return True

  def close(self) -> None:
    """Stops a trace still running (a run that ended inside the range) and uploads it."""
    if self._local is None:
      return
    jax.profiler.stop_trace()
    local, self._local, self._done = self._local, None, True
    if paths.is_remote(self.workdir):
      events = self.workdir / metric_logging.TENSORBOARD_DIR
      for file in pathlib.Path(local).rglob('*'):
        if file.is_file():
          target = events / os.fspath(file.relative_to(local))
          target.parent.mkdir(parents=True, exist_ok=True)
          target.write_bytes(file.read_bytes())
      shutil.rmtree(local, ignore_errors=True)


def memory_line(compiled: Any) -> str | None:
  """The compiled step's memory per device, as XLA plans it; None where XLA does not say."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return (f'training step memory per device: arguments {_mib(analysis.argument_size_in_bytes)}, '
          f'outputs {_mib(analysis.output_size_in_bytes)}, temporaries '
          f'{_mib(analysis.temp_size_in_bytes)} ({_mib(analysis.alias_size_in_bytes)} of the '
          'outputs reuse argument buffers)')


def _mib(size: int) -> str:
  return f'{size / 2**20:,.1f} MiB'
