"""ImageNet with torchvision's BatchNorm topology and a modern recipe.

`googlenet_bn` (BN eps 1e-3, 3x3 "5x5" branch, dropout 0.2), label smoothing
0.1, SGD Nesterov with linear warm-up and cosine decay, Inception crops and
flips. torchvision's own weights (trained differently) score 69.78 % top-1.

  python -m inception_jax train --config imagenet_bn
"""

import ml_collections

from inception_jax.configs import imagenet_paper


def get_config() -> ml_collections.ConfigDict:
  config = imagenet_paper.get_config()  # data set, 224, batch 1024, logging
  config.model = 'googlenet_bn'
  config.dtype = 'auto'  # float32 on CPU, bfloat16 on GPUs and TPUs
  config.color_distortion = False
  config.random_resize_method = False
  config.recipe = 'modern'
  config.nesterov = True
  config.learning_rate = 0.1 * config.batch_size / 256
  config.warmup_epochs = 5.0
  config.weight_decay = 1e-4
  config.label_smoothing = 0.1
  config.ema_decay = 0.0
  config.num_epochs = 120.0
  config.eval_every_steps = 2500
  return config
