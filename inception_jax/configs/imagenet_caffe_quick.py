"""ImageNet with the BVLC Caffe `bvlc_googlenet` quick_solver schedule.

Paper topology; batch 32 x 8 GPUs worth (256), SGD momentum 0.9, base lr 0.01
with polynomial decay (power 0.5) to 0 over 2.4M iterations of 32 images
(60 epochs), weight decay 2e-4, doubled bias learning rate, no photometric
distortions. Caffe cropped 224 at random from 256x256 images; this pipeline's
nearest is the Inception crop used here. BVLC reported 68.7 % top-1 / 88.9 %
top-5 (centre crop).

  python -m inception_jax train --config imagenet_caffe_quick
"""

import ml_collections

from inception_jax.configs import imagenet_paper


def get_config() -> ml_collections.ConfigDict:
  config = imagenet_paper.get_config()  # topology, data set, 224, logging
  config.batch_size = 256
  config.eval_batch_size = 500
  config.color_distortion = False
  config.random_resize_method = False
  config.recipe = 'caffe_quick'
  config.learning_rate = 0.01
  config.weight_decay = 2e-4
  config.poly_power = 0.5
  config.ema_decay = 0.0
  config.num_epochs = 60.0
  return config
