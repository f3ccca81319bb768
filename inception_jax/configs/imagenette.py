"""Imagenette (10 easy ImageNet classes, tfds `imagenette/full-size-v2`) at 224.

A one-GPU-sized check of the full pipeline on real photographs: googlenet_bn,
modern recipe. tfds downloads it (about 1.5 GB) on first use.

  python -m inception_jax train --config imagenette
"""

import ml_collections

from inception_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.model = 'googlenet_bn'
  config.dataset = 'imagenette/full-size-v2'
  config.eval_split = 'validation'
  config.image_size = 224
  config.batch_size = 128
  config.eval_batch_size = 256
  config.recipe = 'modern'
  config.optimizer = 'sgd'
  config.nesterov = True
  config.learning_rate = 0.1
  config.warmup_epochs = 2.0
  config.weight_decay = 5e-5
  config.label_smoothing = 0.1
  config.num_epochs = 60.0
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
