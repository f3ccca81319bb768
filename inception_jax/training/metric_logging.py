"""Where training metrics go: TensorBoard, a metrics.jsonl, the console and a PNG of curves.

Only process 0 writes (`MetricWriter(..., enabled=jax.process_index() == 0)`).
The work directory may be remote (gs://bucket/run, see `paths`). Object stores
such as GCS cannot append, and TensorFlow's summary writer would reach them
through TensorFlow's own GCS client, so for a remote work directory
metrics.jsonl is rewritten whole at each write and the TensorBoard event files
are written to a local temporary folder and uploaded after each flush (at most
every `upload_every_seconds`, and at `close`).
"""

import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging
from etils import epath

from inception_jax import errors
from inception_jax import paths

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'curves.png'
TENSORBOARD_DIR = 'tensorboard'


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: paths.PathLike, enabled: bool = True,
               upload_every_seconds: float = 30.0):
    self.workdir = paths.as_path(workdir)
    self.enabled = enabled
    self.remote = paths.is_remote(self.workdir)
    self._summary_writer = None
    self._local_events = None  # remote work directory: where the events are written first
    self._uploaded: dict[str, int] = {}  # event file name -> size uploaded
    self._last_upload = -math.inf
    self._upload_every_seconds = upload_every_seconds
    self._metrics_text = ''  # remote work directory: metrics.jsonl as written so far
    if enabled:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      self._tf = tf
      events = self.workdir / TENSORBOARD_DIR
      if self.remote:
        metrics = self.workdir / METRICS_FILE
        self._metrics_text = metrics.read_text() if metrics.exists() else ''
        self._local_events = tempfile.mkdtemp(prefix='inception_jax_tensorboard_')
        events = self._local_events
      self._summary_writer = tf.summary.create_file_writer(os.fspath(events))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` (plain floats) for `step`."""
    if not self.enabled:
      return
    record = {'step': int(step), 'time': time.time(), **{k: float(v) for k, v in scalars.items()}}
    line = json.dumps(record) + '\n'
    if self.remote:  # rewritten whole: a failed write is made good by the next one
      self._metrics_text += line
      try:
        (self.workdir / METRICS_FILE).write_text(self._metrics_text)
      except OSError as e:
        logging.warning('could not write %s (%s); trying again at the next record.',
                        self.workdir / METRICS_FILE, e)
    else:
      with open(self.workdir / METRICS_FILE, 'a') as f:
        f.write(line)
    with self._summary_writer.as_default(step=int(step)):
      for name, value in scalars.items():
        self._tf.summary.scalar(name, float(value))
    self._summary_writer.flush()
    self._upload_events()

  def _upload_events(self, force: bool = False) -> None:
    """Copies the local event files that grew to `workdir/tensorboard` (remote work dirs)."""
    if self._local_events is None:
      return
    if not force and time.monotonic() - self._last_upload < self._upload_every_seconds:
      return
    self._last_upload = time.monotonic()
    for name in sorted(os.listdir(self._local_events)):
      local = os.path.join(self._local_events, name)
      if not os.path.isfile(local) or self._uploaded.get(name) == os.path.getsize(local):
        continue
      with open(local, 'rb') as f:
        data = f.read()
      try:
        (self.workdir / TENSORBOARD_DIR / name).write_bytes(data)
      except OSError as e:
        logging.warning('could not upload %s (%s); trying again later.', name, e)
        continue
      self._uploaded[name] = len(data)

  def close(self) -> None:
    if self._summary_writer is not None:
      self._summary_writer.close()
      self._summary_writer = None
      if self._local_events is not None:
        self._upload_events(force=True)
        shutil.rmtree(self._local_events, ignore_errors=True)
        self._local_events = None


def read_metrics(workdir: paths.PathLike) -> list[dict[str, float]]:
  """All records of `workdir/metrics.jsonl`, in order (empty if there is none)."""
  path = paths.as_path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(workdir: paths.PathLike) -> epath.Path:
  """Draws loss, accuracy and learning rate against step into `workdir/curves.png`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  workdir = paths.as_path(workdir)
  records = read_metrics(workdir)
  if not records:
    raise errors.NotFoundError(f'{workdir / METRICS_FILE} has no metrics to plot.')
  panels = [('loss', ['train_loss', 'eval_loss']),
            ('accuracy', ['train_top1', 'eval_top1', 'eval_top5']),
            ('learning rate', ['train_learning_rate'])]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, (title, keys) in zip(axes, panels):
    for key in keys:
      points = [(r['step'], r[key]) for r in records if key in r]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, marker='.' if key.startswith('eval') else None, label=key)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  png = io.BytesIO()  # matplotlib writes local files only; epath writes anywhere
  fig.savefig(png, format='png', dpi=100)
  plt.close(fig)
  path = workdir / CURVES_FILE
  path.write_bytes(png.getvalue())
  return path


def format_duration(seconds: float) -> str:
  """'1h02m', '3m05s' or '42s'."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  if seconds >= 60:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds}s'


def progress_line(step: int, total_steps: int, steps_per_epoch: float,
                  scalars: Mapping[str, float], images_per_second: float,
                  data_wait_share: float, eta_seconds: float) -> str:
  """One console line: step, epoch, loss, accuracy, throughput, data wait and ETA."""
  return (f'step {step}/{total_steps} | epoch {step / steps_per_epoch:.2f} | '
          f"loss {scalars['loss']:.4f} | top1 {scalars['top1']:.3f} | "
          f'{images_per_second:,.0f} img/s | waiting for data {data_wait_share:.0%} | '
          f'ETA {format_duration(eta_seconds)}')


class StepTimer:
  """The throughput window: training steps since the last `restart`, and their wall time.

  Also the share of that time the loop spent blocked on the next batch, which
  tells an input-bound run (a high share) from a compute-bound one.
  """

  def __init__(self, batch_size: int, clock: Callable[[], float] = time.perf_counter):
    self.batch_size = batch_size
    self._clock = clock
    self.restart()

  def restart(self) -> None:
    """Opens a new window, now (evaluations and saves stay out of the throughput)."""
    self._start = self._clock()
    self._waited = 0.0
    self.steps = 0

  def elapsed(self) -> float:
    """Seconds since the window opened."""
    return self._clock() - self._start

  def next_batch(self, batches: Iterator[Any]) -> Any:
    """`next(batches)`, its waiting counted against the window."""
    start = self._clock()
    batch = next(batches)
    self._waited += self._clock() - start
    return batch

  def count_step(self) -> None:
    self.steps += 1

  def scalars(self) -> dict[str, float]:
    """Images/s, seconds per step and the data-wait share of the window; {} without steps."""
    if not self.steps:
      return {}
    elapsed = max(self.elapsed(), 1e-9)
    return {'train_images_per_s': self.steps * self.batch_size / elapsed,
            'train_step_s': elapsed / self.steps,
            'train_data_wait_share': min(self._waited / elapsed, 1.0)}


PROGRESS_EVERY_S = 10.0  # between progress lines of long evaluations and predictions


class Progress:
  """Progress of a long loop on stderr: done/total, items per second and ETA.

  A line at most every PROGRESS_EVERY_S seconds, so a short loop prints nothing.
  """

  def __init__(self, what: str, total: int, unit: str = 'images'):
    self.what, self.total, self.unit = what, total, unit
    self.done = 0
    self._start = self._last = time.monotonic()

  def update(self, count: int) -> None:
    """Counts `count` more items done; prints a line if the last was long enough ago."""
    self.done += count
    now = time.monotonic()
    if now - self._last < PROGRESS_EVERY_S:
      return
    self._last = now
    rate = self.done / max(now - self._start, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else math.inf
    print(f'{self.what}: {self.done:,}/{self.total:,} {self.unit} | {rate:,.1f} {self.unit}/s '
          f'| ETA {format_duration(eta)}', file=sys.stderr, flush=True)
