"""`python -m inception_jax evaluate`: trained models on the held-out split.

One model or an ensemble (`--ensemble`), with 1, 10 or 144 crops per image as
in the paper's Table 3. Crops of one image, and the models of an ensemble, are
averaged in softmax space. Every example of the split is counted exactly once
(padded batches carry a mask). Uses the Polyak-averaged parameters when a
checkpoint has them.
"""

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from inception_jax import errors
from inception_jax import metrics
from inception_jax import sharding
from inception_jax import xla_options
from inception_jax.data import pipeline
from inception_jax.data import pixels as pixels_lib
from inception_jax.data import preprocessing
from inception_jax.model import googlenet
from inception_jax.training import checkpointing
from inception_jax.training import metric_logging
from inception_jax.training import rundir


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model rebuilt from a checkpoint, ready for inference."""
  path: str
  step: int
  model: googlenet.GoogLeNet
  variables: Any
  config: ml_collections.ConfigDict
  meta: dict[str, Any]


def load_model(path: str | pathlib.Path, config: ml_collections.ConfigDict) -> LoadedModel:
  """Rebuilds the model of a checkpoint (work dir, checkpoints/ or a step dir).

  `config` is its run's config (`rundir.load_config(rundir.workdir_of(path))`).
  """
  restored = checkpointing.load_raw(path)
  state = restored.state
  variables = googlenet.model_variables(state['params'], state.get('batch_stats'),
                                     state.get('ema_params'))
  model = rundir.build_model(config, restored.meta['num_classes'])
  return LoadedModel(path=str(path), step=restored.step, model=model, variables=variables,
                     config=config, meta=restored.meta)


def probabilities(loaded: LoadedModel, variables: Any, pixels: jax.Array) -> jax.Array:
  """[B, classes] class probabilities of uint8 pixels [B, H, W, 3] or [B, crops, H, W, 3].

  Normalized with the model's own run's mean_rgb/std_rgb, so that ensemble members
  trained with different ones each see the inputs they were trained on; crops are
  averaged in softmax space.
  """
  images = pixels_lib.normalize(pixels, loaded.config.mean_rgb, loaded.config.std_rgb)
  return jnp.exp(metrics.log_probs(loaded.model.apply, variables, images))


def predict_split(loaded: LoadedModel, config: ml_collections.ConfigDict, crops: int,
                  total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities [N, classes], labels [N]) for every example of config.eval_split.

  `total`: the split's size, for progress lines on stderr during a long evaluation.
  """
  preprocessing.warn_if_mirrors_unseen(crops, config.random_flip)
  mesh = sharding.create_mesh()
  variables = jax.device_put(loaded.variables, sharding.replicated(mesh))
  forward = jax.jit(lambda v, x: probabilities(loaded, v, x),
                    in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                    out_shardings=sharding.replicated(mesh),
                    compiler_options=xla_options.for_model(jax.default_backend(),
                                                            loaded.model.dtype))
  probs, labels = [], []
  progress = metric_logging.Progress(f'evaluating {loaded.path}', total) if total else None
  for batch in pipeline.create_eval_iterator(config, mesh, crops=crops):
    keep = np.asarray(jax.device_get(batch['mask'])) > 0
    probs.append(np.asarray(jax.device_get(forward(variables, batch['image'])))[keep])
    labels.append(np.asarray(jax.device_get(batch['label']))[keep])
    if progress:
      progress.update(int(keep.sum()))
  if not sum(len(p) for p in probs):
    raise errors.UserError(f'no example of split {config.eval_split!r} could be read, so '
                           'nothing was evaluated: fix or replace its files.')
  return np.concatenate(probs), np.concatenate(labels)


def evaluate_paths(paths: Sequence[str], crops: int,
                   configs: Sequence[ml_collections.ConfigDict]) -> dict[str, Any]:
  """Metrics of each model in `paths` (with its run's config) and of their ensemble.

  The data (set, split, image size) come from the first model's config; the
  others must agree.
  """
  loaded = [load_model(p, c) for p, c in zip(paths, configs, strict=True)]
  data_config = loaded[0].config
  for other in loaded[1:]:
    for field in ('dataset', 'eval_split', 'image_size'):
      if other.config[field] != data_config[field]:
        raise errors.UserError(
            f'ensemble members disagree on {field}: {loaded[0].path} has '
            f'{data_config[field]!r}, {other.path} has {other.config[field]!r}.')
  info = pipeline.get_dataset_info(data_config)
  pipeline.check_splits(data_config, info, (data_config.eval_split,))
  for member in loaded:
    if member.meta['num_classes'] != info.num_classes:
      raise errors.UserError(
          f"{member.path} was trained on {member.meta['num_classes']} classes, but "
          f'{info.name} has {info.num_classes}: evaluate it on the data set it was trained '
          'on (--config.dataset / --config.image_folder / --config.data_dir).')
  results, all_probs, labels = [], [], None
  for member in loaded:
    probs, labels = predict_split(member, data_config, crops,
                                  info.split_sizes[data_config.eval_split])
    all_probs.append(probs)
    results.append({'path': member.path, 'step': member.step,
                    **metrics.classification_metrics(probs, labels)})
  report = {'crops': crops, 'models': results}
  if len(loaded) > 1:
    report['ensemble'] = metrics.classification_metrics(np.mean(all_probs, axis=0), labels)
  return report


def format_report(report: dict[str, Any]) -> str:
  """A small Markdown table of the report."""
  lines = ["| model | crops | top-1 | top-5 | loss | examples |", '|---|---:|---:|---:|---:|---:|']
  rows = [(f"{r['path']} (step {r['step']})", r) for r in report['models']]
  if 'ensemble' in report:
    rows.append((f"ensemble of {len(report['models'])}", report['ensemble']))
  for name, r in rows:
    lines.append(f"| {name} | {report['crops']} | {r['top1']:.4f} | {r['top5']:.4f} | "
                 f"{r['loss']:.4f} | {r['count']} |")
  return '\n'.join(lines)
