"""CIFAR-10 (tfds `cifar10`) at 32x32 with the paper topology.

The 32x32 images go through the whole network (the last blocks run at 1x1,
the aux heads pool adaptively to 4x4). tfds downloads it (160 MB) on first use.

  python -m inception_jax train --config cifar10
"""

import ml_collections

from inception_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.model = 'googlenet'
  config.dataset = 'cifar10'
  config.image_size = 32
  config.batch_size = 128
  config.eval_batch_size = 500
  config.mean_rgb = (125.3, 123.0, 113.9)
  config.std_rgb = (63.0, 62.1, 66.7)
  config.crop = 'inception'
  config.crop_area_range = (0.35, 1.0)
  config.eval_resize_ratio = 1.0
  config.recipe = 'modern'
  config.optimizer = 'sgd'
  config.nesterov = True
  config.learning_rate = 0.05
  config.warmup_epochs = 2.0
  config.weight_decay = 5e-4
  config.num_epochs = 100.0
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return config
