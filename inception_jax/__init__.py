"""GoogLeNet / Inception v1 (Szegedy et al. 2014) in JAX/Flax.

The public Python API; each name is imported on first use, so that importing the
package (and `python -m inception_jax --help`) loads neither JAX nor TensorFlow:

  import inception_jax
  model = inception_jax.create_model('googlenet', num_classes=1000)
  predictor = inception_jax.Predictor('workdirs/default')  # a trained run
  predictions, skipped = predictor.predict(['digit.png'])
  net = inception_jax.pretrained('torchvision')  # model, variables, preprocessing

Functional use (docs/functional.md): `load_run` gives a run as (model, variables,
config); `model_loss` is the paper's loss as a pure function; `TrainState`,
`create_train_state` and `train_step` make a custom training loop.
"""

import importlib
from typing import Any

__version__ = '0.1.0'

_PUBLIC = {
    'create_model': 'inception_jax.model.googlenet',
    'GoogLeNet': 'inception_jax.model.googlenet',
    'ModelOutput': 'inception_jax.model.googlenet',
    'extract_features': 'inception_jax.model.googlenet',
    'init_variables': 'inception_jax.model.googlenet',
    'Predictor': 'inception_jax.serving.inference',
    'Prediction': 'inception_jax.serving.inference',
    'pretrained': 'inception_jax.serving.pretrained',
    'Pretrained': 'inception_jax.serving.pretrained',
    'load_run': 'inception_jax.serving.functional',
    'model_loss': 'inception_jax.training.steps',
    'TrainState': 'inception_jax.training.steps',
    'create_train_state': 'inception_jax.training.steps',
    'train_step': 'inception_jax.training.steps',
}

__all__ = ['__version__', *_PUBLIC]


def __getattr__(name: str) -> Any:
  if name not in _PUBLIC:
    raise AttributeError(f'module inception_jax has no attribute {name!r}')
  return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
  return sorted(__all__)
