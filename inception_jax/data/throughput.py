"""Images/s of the input pipeline as the step receives it, beside torchvision's loaders.

Each measured stream (this project's training and evaluation batches as device arrays;
torchvision's ImageFolder + DataLoader with its usual transforms) is started afresh,
`warmup` batches are taken untimed, and the next `batches` are timed, in wall time and
in CPU time (that of the stream's threads and worker processes). The streams are timed
in interleaved rounds, the order rotating, so that load from others on a shared machine
hits all of them alike: compare ratios within one run. The per-core bound of PIL (draft
decode + crop + resize to uint8, one process) is timed in the same rounds.
"""

import functools
import glob
import os
import statistics
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from PIL import Image

from inception_jax import sharding
from inception_jax.data import pipeline
from inception_jax.data import pixels
from inception_jax.data import preprocessing

TORCHVISION = 'torchvision'
_EVAL_RESIZE = 256 / 224  # torchvision's Resize(256) before CenterCrop(224)


def ours(config: ml_collections.ConfigDict, kind: str) -> Callable[[], Iterator[Any]]:
  """A starter of this project's 'train' or 'eval' images as the model receives them.

  Global device arrays, normalized on the device as the steps do (`pixels.normalize`).
  """
  mesh = sharding.create_mesh(jax.devices())
  normalize = jax.jit(functools.partial(pixels.normalize, mean_rgb=tuple(config.mean_rgb),
                                        std_rgb=tuple(config.std_rgb)))
  create = (pipeline.create_train_iterator if kind == 'train'
            else pipeline.create_eval_iterator)
  return lambda: ({**batch, 'image': normalize(batch['image'])}
                  for batch in create(config, mesh))


def torchvision_loader(config: ml_collections.ConfigDict, kind: str,
                       workers: int) -> Callable[[], Iterator[Any]]:
  """A starter of torchvision's usual ImageFolder batches for `kind` 'train' or 'eval'.

  Training: RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, shuffled;
  evaluation: Resize(shorter side) + CenterCrop + ToTensor + Normalize, in order. PIL
  decodes, in `workers` processes.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision import datasets, transforms  # pylint: disable=import-outside-toplevel
  size = config.image_size
  normalize = transforms.Normalize([m / 255 for m in config.mean_rgb],
                                   [s / 255 for s in config.std_rgb])
  if kind == 'train':
    steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
  else:
    steps = [transforms.Resize(round(size * _EVAL_RESIZE)), transforms.CenterCrop(size)]
  folder = datasets.ImageFolder(
      os.path.join(config.image_folder, config.train_split if kind == 'train'
                   else config.eval_split),
      transforms.Compose([*steps, transforms.ToTensor(), normalize]))

  def start() -> Iterator[Any]:
    loader = torch.utils.data.DataLoader(folder, batch_size=config.batch_size,
                                         shuffle=kind == 'train', num_workers=workers,
                                         drop_last=kind == 'train')
    return iter(loader)
  return start


def pil_bound(paths: list[str], size: int,
              seed: int = 0) -> Callable[[], tuple[float, float]]:
  """One core's floor of JPEG preprocessing: PIL draft decode + random crop + resize, uint8.

  The returned function handles every path once and returns (images/s, images per
  CPU-second).
  """
  rng = np.random.default_rng(seed)

  def run() -> tuple[float, float]:
    begin, begin_cpu = time.perf_counter(), time.process_time()
    for path in paths:
      with Image.open(path) as image:
        image.draft('RGB', (size, size))  # DCT-scaled decoding where the size allows
        width, height = image.size
        side = int(min(width, height) * rng.uniform(0.3, 1.0))
        x, y = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
        np.asarray(image.convert('RGB').resize((size, size), Image.BILINEAR,
                                               box=(x, y, x + side, y + side)))
    return (len(paths) / (time.perf_counter() - begin),
            len(paths) / (time.process_time() - begin_cpu))
  return run


def time_stream(start: Callable[[], Iterator[Any]], warmup: int,
                batches: int) -> tuple[float, float]:
  """(images/s, images per CPU-second) of `batches` batches of a freshly started stream.

  `warmup` batches are taken untimed first. CPU time counts this process's threads and
  its child processes (DataLoader workers): per CPU-second, the rate does not depend on
  how many cores others leave free on a shared machine.
  """
  stream = start()
  for _ in range(warmup):
    _ready(next(stream))
  begin, begin_cpu = time.perf_counter(), cpu_seconds()
  images = 0
  for _ in range(batches):
    images += _ready(next(stream))
  elapsed, cpu = time.perf_counter() - begin, cpu_seconds() - begin_cpu
  del stream  # stops its background work before the next stream is timed
  return images / elapsed, images / cpu


def cpu_seconds() -> float:
  """CPU seconds used so far by this process and its live child processes (Linux)."""
  total = time.process_time()
  tick = os.sysconf('SC_CLK_TCK')
  for children in glob.glob(f'/proc/{os.getpid()}/task/*/children'):
    for pid in open(children).read().split():
      try:
        with open(f'/proc/{pid}/stat') as f:
          fields = f.read().rsplit(')', 1)[1].split()
      except OSError:  # exited since the listing
        continue
      total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
  return total


def _ready(batch: Any) -> int:
  """Waits for a batch's arrays and returns its number of images."""
  images = batch['image'] if isinstance(batch, dict) else batch[0]
  if isinstance(images, jax.Array):
    images.block_until_ready()
  return images.shape[0]


def time_interleaved(streams: dict[str, Callable[[], tuple[float, float]]], rounds: int
                     ) -> dict[str, list[tuple[float, float]]]:
  """Runs each timing once per round, the order rotating; {name: [its result per round]}."""
  names = list(streams)
  rates = {name: [] for name in names}
  for round_index in range(rounds):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      rates[name].append(streams[name]())
  return rates


def summary(rates: list[float]) -> dict[str, float]:
  """Median and range of per-round rates."""
  return dict(median=statistics.median(rates), min=min(rates), max=max(rates))


def image_paths(config: ml_collections.ConfigDict, split: str) -> list[str]:
  """The image files of `split` of `config.image_folder`, sorted."""
  paths = []
  for folder, _, files in sorted(os.walk(os.path.join(config.image_folder, split))):
    paths.extend(os.path.join(folder, f) for f in sorted(files)
                 if f.lower().endswith(preprocessing.IMAGE_EXTENSIONS))
  return paths
