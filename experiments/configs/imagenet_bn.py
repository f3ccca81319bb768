"""ImageNet with torchvision's BatchNorm topology and a modern recipe.

`googlenet_bn` (BN eps 1e-3, 3x3 "5x5" branch, dropout 0.2), label smoothing
0.1, SGD Nesterov with linear warm-up and cosine decay, Inception crops and
flips. torchvision's own weights (trained differently) score 69.78 % top-1.

  python -m inception_jax train --config experiments/configs/imagenet_bn.py
"""

import ml_collections

from inception_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.model = 'googlenet_bn'
  config.dataset = 'imagenet2012'
  config.eval_split = 'validation'
  config.image_size = 224
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.crop = 'inception'
  config.random_flip = True
  config.recipe = 'modern'
  config.optimizer = 'sgd'
  config.nesterov = True
  config.learning_rate = 0.1 * config.batch_size / 256
  config.warmup_epochs = 5.0
  config.weight_decay = 1e-4
  config.label_smoothing = 0.1
  config.num_epochs = 120.0
  config.log_every_steps = 100
  config.eval_every_steps = 2500
  config.checkpoint_every_steps = 2000
  return config
