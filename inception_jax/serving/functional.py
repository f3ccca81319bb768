"""A trained run as plain values, for pure functional use: (model, variables, config)."""

import ml_collections

from inception_jax import paths
from inception_jax.model import googlenet
from inception_jax.serving import evaluation
from inception_jax.training import rundir


def load_run(path: paths.PathLike) -> tuple[googlenet.GoogLeNet, dict, ml_collections.ConfigDict]:
  """The model, variables and config of a run, local or a URI such as gs://bucket/run.

  `path` is a work directory (its newest checkpoint), its checkpoints/ folder or
  one step's folder. The variables are those evaluation uses: {'params'} (the
  Polyak-averaged ones when the run kept them) and 'batch_stats' with BatchNorm,
  so `model.apply(variables, images, train=False).logits` are the run's logits
  for normalized images ((pixels - config.mean_rgb) / config.std_rgb).
  """
  loaded = evaluation.load_model(path, rundir.load_config(rundir.workdir_of(path)))
  return loaded.model, loaded.variables, loaded.config
