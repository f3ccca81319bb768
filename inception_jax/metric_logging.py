"""Where training metrics go: TensorBoard, a metrics.jsonl, the console and a PNG of curves.

Only process 0 writes (`MetricWriter(..., enabled=jax.process_index() == 0)`).
"""

import json
import math
import pathlib
import time
from typing import Mapping

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'curves.png'


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._summary_writer = None
    if enabled:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      self._tf = tf
      self._summary_writer = tf.summary.create_file_writer(str(self.workdir / 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` (plain floats) for `step`."""
    if not self.enabled:
      return
    record = {'step': int(step), 'time': time.time(), **{k: float(v) for k, v in scalars.items()}}
    with open(self.workdir / METRICS_FILE, 'a') as f:
      f.write(json.dumps(record) + '\n')
    with self._summary_writer.as_default(step=int(step)):
      for name, value in scalars.items():
        self._tf.summary.scalar(name, float(value))
    self._summary_writer.flush()

  def close(self) -> None:
    if self._summary_writer is not None:
      self._summary_writer.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, float]]:
  """All records of `workdir/metrics.jsonl`, in order (empty if there is none)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str | pathlib.Path) -> pathlib.Path:
  """Draws loss, accuracy and learning rate against step into `workdir/curves.png`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  records = read_metrics(workdir)
  if not records:
    raise FileNotFoundError(f'{pathlib.Path(workdir) / METRICS_FILE} has no metrics to plot.')
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
  path = pathlib.Path(workdir) / CURVES_FILE
  fig.savefig(path, dpi=100)
  plt.close(fig)
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
                  eta_seconds: float) -> str:
  """One console line: step, epoch, loss, accuracy, throughput and ETA."""
  return (f'step {step}/{total_steps} | epoch {step / steps_per_epoch:.2f} | '
          f"loss {scalars['loss']:.4f} | top1 {scalars['top1']:.3f} | "
          f'{images_per_second:,.0f} img/s | ETA {format_duration(eta_seconds)}')
