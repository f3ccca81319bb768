"""ImageNet with the paper's topology and recipe (Szegedy et al. 2014, section 6).

GoogLeNet as published (5x5 branches, LRN, aux heads weighted 0.3, dropout 0.4)
at 224x224 with the paper's sampling: Inception crops of 8-100 % of the area
with aspect ratio in [3/4, 4/3], random interpolation, photometric distortions.
Asynchronous SGD with momentum 0.9 and a learning rate lowered 4 % every 8
epochs, Polyak averaging for the final model. The paper does not state the base
learning rate or batch size; 0.0015 per 32 images scaled linearly to the global
batch is the usual reading. Paper: 10.07 % top-5 error (single model, one crop,
validation). Prepare `imagenet2012` first (docs/data.md).

  python -m inception_jax train --config imagenet_paper \
      --config.data_dir=gs://BUCKET/tensorflow_datasets --workdir gs://BUCKET/googlenet
"""

import ml_collections

from inception_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.model = 'googlenet'
  config.dtype = 'auto'  # float32 on CPU, bfloat16 on GPUs and TPUs
  config.dataset = 'imagenet2012'
  config.eval_split = 'validation'
  config.image_size = 224
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.crop = 'inception'
  config.crop_area_range = (0.08, 1.0)
  config.random_flip = True
  config.color_distortion = True
  config.random_resize_method = True
  config.recipe = 'paper'
  config.optimizer = 'sgd'
  config.learning_rate = 0.0015 * config.batch_size / 32
  config.momentum = 0.9
  config.weight_decay = 2e-4
  config.lr_decay_factor = 0.96
  config.lr_decay_epochs = 8.0
  config.ema_decay = 0.9999
  config.num_epochs = 250.0
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  return config
