"""The 1x1 bottleneck (section 4 of the paper): naive vs reduced blocks, counted and timed.

  python -m experiments.bottleneck [--batch 8] [--repeats 5]

1. The seeds' example: 32 5x5 filters on 28x28x192, without and with a 16-channel
   1x1 reduction first (multiply-adds counted from the layers).
2. Block 3a naive (Figure 2a) vs reduced (Figure 2b).
3. The whole network built with naive vs reduced blocks: parameters, multiply-adds,
   and the measured forward time (eval mode, 224x224) on this machine, the two
   models timed alternately in one process so that machine noise hits both.
Writes experiments/results/bottleneck.md.
"""

import argparse
import pathlib
import platform
import time

import flax.linen as nn
import jax
import numpy as np

from inception_jax.model import layers, googlenet, summary

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Reduced5x5(nn.Module):
  """A 16-channel 1x1 reduction, then 32 5x5 filters."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return layers.ConvReLU(32, 5)(layers.ConvReLU(16, 1)(x, train), train)


def _macs(module: nn.Module, shape: tuple[int, ...]) -> int:
  calls, _ = summary.trace_calls(module, shape, train=False)
  return sum(c.macs for c in calls)


def _params(module: nn.Module, shape: tuple[int, ...]) -> int:
  _, variables = summary.trace_calls(module, shape, train=False)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params'])))


def counted_rows() -> list[tuple[str, int, int]]:
  """(what, params, multiply-adds) for the seeds' example and block 3a."""
  block_input = (1, 28, 28, 192)
  widths = googlenet.INCEPTION_WIDTHS['3a']
  cases = [('5x5 conv, 32 filters, on 28x28x192', layers.ConvReLU(32, 5)),
           ('1x1 reduction to 16, then 5x5 conv, 32 filters', _Reduced5x5()),
           ('block 3a, naive (Figure 2a)', googlenet.InceptionBlock(widths, naive=True)),
           ('block 3a, with reductions (Figure 2b)', googlenet.InceptionBlock(widths))]
  return [(name, _params(m, block_input), _macs(m, block_input)) for name, m in cases]


def time_forwards(names: list[str], batch: int, repeats: int) -> dict[str, list[float]]:
  """Seconds per eval-mode forward at 224, the models timed in alternation."""
  images = jax.random.normal(jax.random.key(0), (batch, 224, 224, 3))
  forwards = {}
  for name in names:
    model = googlenet.create_model(name)
    variables = googlenet.init_variables(model, jax.random.key(1), (1, 224, 224, 3))
    forward = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False).logits)
    forward(variables, images).block_until_ready()  # compile and warm up
    forwards[name] = (forward, variables)
  times = {name: [] for name in names}
  for _ in range(repeats):
    for name, (forward, variables) in forwards.items():
      start = time.perf_counter()
      forward(variables, images).block_until_ready()
      times[name].append(time.perf_counter() - start)
  return times


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo where there is one, else the architecture."""
  cpuinfo = pathlib.Path('/proc/cpuinfo')
  if cpuinfo.exists():
    for line in cpuinfo.read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  return platform.machine()


def report(batch: int, repeats: int) -> str:
  """The three tables as Markdown."""
  lines = ['| what | params | multiply-adds |', '|---|---:|---:|']
  for name, params, macs in counted_rows():
    lines.append(f'| {name} | {params:,} | {macs:,} |')
  names = ['googlenet_naive', 'googlenet']
  times = time_forwards(names, batch, repeats)
  lines += ['', f'Whole network, forward at 224x224, batch {batch}, median of {repeats} '
            f'alternating runs on {cpu_name()} '
            f'({jax.device_count()} {jax.devices()[0].platform} device):', '',
            '| network | params (no aux) | multiply-adds / image | forward ms (median, min-max) |',
            '|---|---:|---:|---:|']
  for name in names:
    totals = summary.totals(summary.layer_table(googlenet.create_model(name), 224))
    t = np.array(times[name]) * 1e3
    lines.append(f"| {name} | {totals['params']:,} | {totals['macs'] / 1e9:.2f} G | "
                 f'{np.median(t):,.0f} ({t.min():,.0f}-{t.max():,.0f}) |')
  ratio = np.median(times['googlenet_naive']) / np.median(times['googlenet'])
  lines.append(f'\nThe reduced network is {ratio:.1f}x faster here.')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', type=pathlib.Path,
                      default=ROOT / 'experiments' / 'results' / 'bottleneck.md')
  args = parser.parse_args()
  start = time.time()
  text = report(args.batch, args.repeats)
  print(text)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(text + f'\n\n(took {time.time() - start:.0f} s)\n')
  print(f'wrote {args.out} in {time.time() - start:.0f} s')


if __name__ == '__main__':
  main()
