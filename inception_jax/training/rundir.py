"""A run directory: its `config.json`, the model it describes and what its checkpoints record.

The training loop writes these; evaluation, prediction, export, conversion and
fine-tuning read them back, so they live here, below all of them.
"""

import json
from typing import Any

from etils import epath
import ml_collections

from inception_jax import errors
from inception_jax import paths
from inception_jax.data import pipeline
from inception_jax.model import googlenet
from inception_jax.training import checkpointing

CONFIG_FILE = 'config.json'


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> googlenet.GoogLeNet:
  """The model the config names, for `num_classes` classes."""
  return googlenet.create_model(config.model, num_classes=num_classes, dtype=config.dtype,
                             **config.model_options.to_dict())


def checkpoint_meta(config: ml_collections.ConfigDict, info: pipeline.DatasetInfo
                    ) -> dict[str, Any]:
  """What a checkpoint records about the model that wrote it."""
  return {'model': config.model, 'model_options': config.model_options.to_dict(),
          'num_classes': info.num_classes, 'image_size': config.image_size,
          'dataset': info.name, 'class_names': list(info.class_names)}


def save_config(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> None:
  """Writes the resolved config as `workdir/config.json` (read back by `load_config`)."""
  (paths.as_path(workdir) / CONFIG_FILE).write_text(
      config.to_json_best_effort(indent=1, sort_keys=True))


def load_config(workdir: paths.PathLike) -> ml_collections.ConfigDict:
  """The resolved config a run saved in its work directory."""
  path = paths.as_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise errors.NotFoundError(f'{path} not found: pass --config with the run\'s config file.')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def workdir_of(path: paths.PathLike) -> epath.Path:
  """The run directory (holding config.json) of a work dir or checkpoint path."""
  root, _ = checkpointing.find_checkpoint(path)
  return root.parent
