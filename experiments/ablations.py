"""Ablations of the paper's design choices on the embedded digits, several seeds each.

  python -m experiments.ablations [--seeds 0 1 2] [--epochs 10] [--width 0.25]

The paper topology (`googlenet`, no BatchNorm) at reduced width on the scikit-learn
digits (32x32), AdamW, the same number of epochs for every variant:
baseline (aux heads weighted 0.3, LRN, dropout 0.4, reduced blocks), aux heads off,
LRN off, dropout 0, naive blocks (Figure 2a). Reports final test top-1 as mean ± std
over seeds and draws the test-accuracy curves into one PNG. Writes
experiments/results/ablations.{md,png}; work directories go to a temporary folder.
"""

import argparse
import pathlib
import tempfile
import time

import numpy as np

from experiments import compilation_cache
from inception_jax.configs import default
from inception_jax.training import loop
from inception_jax.training import metric_logging

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {
    'baseline': {},
    'aux heads off': {'aux_weight': 0.0, 'model_options.aux_heads': False},
    'LRN off': {'model_options.lrn': False},
    'dropout 0': {'model_options.dropout_rate': 0.0, 'model_options.aux_dropout_rate': 0.0},
    'naive blocks': {'model': 'googlenet_naive'},
}


def variant_config(changes: dict, seed: int, epochs: float, width: float, data_dir: str):
  """The default config turned into the paper topology, then the variant's changes."""
  config = default.get_config()
  config.model = 'googlenet'
  config.model_options.width = width
  config.optimizer = 'adamw'
  config.learning_rate = 2e-3
  config.weight_decay = 0.05
  config.num_epochs = epochs
  config.seed = seed
  config.eval_every_steps = 22  # once per epoch
  config.checkpoint_every_steps = 10_000
  config.log_every_steps = 22
  if data_dir:
    config.data_dir = data_dir
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def run(seeds: list[int], epochs: float, width: float, data_dir: str, out: pathlib.Path) -> str:
  """Trains every variant for every seed; returns the Markdown table."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  results, curves = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, changes in VARIANTS.items():
      for seed in seeds:
        workdir = pathlib.Path(tmp) / f'{name.replace(" ", "_")}_{seed}'
        config = variant_config(changes, seed, epochs, width, data_dir)
        final = loop.train_and_evaluate(config, workdir)
        results.setdefault(name, []).append(final['top1'])
        evals = [(r['step'], r['eval_top1']) for r in metric_logging.read_metrics(workdir)
                 if 'eval_top1' in r]
        curves.setdefault(name, []).append(evals)
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, runs in curves.items():
    steps = [s for s, _ in runs[0]]
    mean = np.mean([[v for _, v in r] for r in runs], axis=0)
    ax.plot(steps, mean, marker='.', label=name)
  ax.set_xlabel('step')
  ax.set_ylabel(f'test top-1 (mean of {len(seeds)} seeds)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out.with_suffix('.png'), dpi=100)
  lines = [f'googlenet (paper topology) x{width} width, {epochs:g} epochs of the digits at 32x32, '
           f'AdamW, seeds {seeds}:', '', '| variant | test top-1, mean ± std | per seed |',
           '|---|---:|---|']
  for name, values in results.items():
    lines.append(f'| {name} | {100 * np.mean(values):.2f} ± {100 * np.std(values):.2f} % | '
                 + ', '.join(f'{100 * v:.2f}' for v in values) + ' |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--epochs', type=float, default=10.0)
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--data-dir', default='', help='tfds data_dir (default: tfds default)')
  parser.add_argument('--out', type=pathlib.Path,
                      default=ROOT / 'experiments' / 'results' / 'ablations.md')
  args = parser.parse_args()
  start = time.time()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  with compilation_cache.shared_compilation_cache():
    text = run(args.seeds, args.epochs, args.width, args.data_dir, args.out)
  text += f'\n\n(took {time.time() - start:.0f} s)\n'
  print(text)
  args.out.write_text(text)
  print(f'wrote {args.out} and {args.out.with_suffix(".png")}')


if __name__ == '__main__':
  main()
