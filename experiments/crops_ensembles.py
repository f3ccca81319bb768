"""The paper's Table 3 in miniature: crops per image and ensemble size vs error.

  python -m experiments.crops_ensembles [--models 5] [--epochs 6]

Trains `--models` independently seeded `googlenet_bn` models (the default config,
half width, 32x32 digits) with random mirroring, since 10 and 144 crops include
mirrored images, then evaluates each with 1, 10 and 144 crops (softmax-averaged, as
in the paper) and ensembles of the first 1, 3, ... models. Cost is forward passes per
test image. Single-model rows give the mean ± std over the models. Writes
experiments/results/crops_ensembles.md; work directories go to a temporary folder.
Compilations are shared between the seeds through JAX's persistent compilation cache.
"""

import argparse
import pathlib
import tempfile
import time

import numpy as np

from experiments import compilation_cache
from inception_jax import config as config_lib
from inception_jax import metrics as metrics_lib
from inception_jax.configs import default
from inception_jax.serving import evaluation
from inception_jax.training import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]


def model_config(seed: int, epochs: float, data_dir: str):
  """The default config with random mirroring, seeded."""
  config = default.get_config()
  config.random_flip = True
  config.num_epochs = epochs
  config.seed = seed
  config.log_every_steps = 22
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 10_000
  if data_dir:
    config.data_dir = data_dir
  return config


def ensemble_sizes(models: int) -> list[int]:
  """1, 3, 5, ... up to `models`, always ending with `models`."""
  return sorted({*range(1, models + 1, 2), models})


def error_row(probs: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
  """Top-1 error (%) and mean negative log-likelihood of softmax-averaged `probs`."""
  metrics = metrics_lib.classification_metrics(np.mean(probs, axis=0), labels)
  return 100 * (1 - metrics['top1']), metrics['loss']


def table(probs: dict[int, list[np.ndarray]], labels: np.ndarray) -> list[str]:
  """Markdown rows: ensemble size x crops, with cost and the error relative to 1x1."""
  models = len(probs[1])
  singles = {crops: [error_row([p], labels) for p in probs[crops]] for crops in probs}
  base_error = np.mean([e for e, _ in singles[1]])
  lines = ['| models | crops | cost (forward passes / image) | top-1 error | '
           'vs 1 model, 1 crop | NLL |', '|---:|---:|---:|---:|---:|---:|']
  for size in ensemble_sizes(models):
    for crops in config_lib.CROPS:
      if size == 1:
        errors = [e for e, _ in singles[crops]]
        nlls = [n for _, n in singles[crops]]
        error = np.mean(errors)
        shown = f'{error:.2f} ± {np.std(errors):.2f} %'
        nll = f'{np.mean(nlls):.4f} ± {np.std(nlls):.4f}'
      else:
        error, nll_value = error_row(probs[crops][:size], labels)
        shown, nll = f'{error:.2f} %', f'{nll_value:.4f}'
      lines.append(f'| {size} | {crops} | {size * crops} | {shown} | '
                   f'{error - base_error:+.2f} | {nll} |')
  return lines


def run(models: int, epochs: float, data_dir: str) -> str:
  """Trains the models, evaluates every (crops, model) pair; returns the Markdown report."""
  probs: dict[int, list[np.ndarray]] = {crops: [] for crops in config_lib.CROPS}
  labels = None
  accuracies, train_s, eval_s = [], 0.0, {crops: 0.0 for crops in config_lib.CROPS}
  with tempfile.TemporaryDirectory() as tmp:
    for seed in range(models):
      config = model_config(seed, epochs, data_dir)
      workdir = pathlib.Path(tmp) / f'seed_{seed}'
      start = time.time()
      accuracies.append(loop.train_and_evaluate(config, workdir)['top1'])
      train_s += time.time() - start
      loaded = evaluation.load_model(workdir, config)
      for crops in config_lib.CROPS:
        start = time.time()
        member_probs, member_labels = evaluation.predict_split(loaded, config, crops)
        eval_s[crops] += time.time() - start
        if labels is not None and not np.array_equal(labels, member_labels):
          raise RuntimeError('the evaluation split came in a different order for another model')
        labels = member_labels
        probs[crops].append(member_probs)
  header = [f'{models} x `googlenet_bn` (half width, random mirroring, seeds 0-{models - 1}), '
            f'{epochs:g} epochs each on the digits at 32x32; {len(labels)} test images. '
            'Crops and ensemble members are averaged in softmax space.', '']
  footer = ['', f'Training: {train_s:.0f} s for {models} models '
            f'(trainer top-1 at 1 crop: {", ".join(f"{100 * a:.2f}" for a in accuracies)} %). '
            'Evaluation of all models: ' + ', '.join(
                f'{crops} crop(s) {eval_s[crops]:.0f} s' for crops in config_lib.CROPS) + '.']
  return '\n'.join(header + table(probs, labels) + footer)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--models', type=int, default=5, help='independently seeded models')
  parser.add_argument('--epochs', type=float, default=6.0)
  parser.add_argument('--data-dir', default='', help='tfds data_dir (default: tfds default)')
  parser.add_argument('--out', type=pathlib.Path,
                      default=ROOT / 'experiments' / 'results' / 'crops_ensembles.md')
  args = parser.parse_args()
  if args.models < 1:
    parser.error(f'--models must be at least 1, got {args.models}.')
  start = time.time()
  with compilation_cache.shared_compilation_cache():
    text = run(args.models, args.epochs, args.data_dir)
  text += f'\n(took {time.time() - start:.0f} s)\n'
  print(text)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(text)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
