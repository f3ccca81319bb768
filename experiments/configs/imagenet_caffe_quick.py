"""ImageNet with the BVLC Caffe `bvlc_googlenet` quick_solver schedule.

Paper topology; batch 32 x 8 GPUs worth (256), SGD momentum 0.9, base lr 0.01
with polynomial decay (power 0.5) to 0 over 2.4M iterations of 32 images
(60 epochs at batch 256 here, scaled), weight decay 2e-4, random crops and
mirrors only. BVLC reported 68.7 % top-1 / 88.9 % top-5 (centre crop).

  python -m inception_jax train --config experiments/configs/imagenet_caffe_quick.py
"""

import ml_collections

from inception_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.model = 'googlenet'
  config.dataset = 'imagenet2012'
  config.eval_split = 'validation'
  config.image_size = 224
  config.batch_size = 256
  config.eval_batch_size = 500
  config.crop = 'inception'
  config.random_flip = True
  config.recipe = 'caffe_quick'
  config.optimizer = 'sgd'
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 2e-4
  config.poly_power = 0.5
  config.num_epochs = 60.0
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  return config
