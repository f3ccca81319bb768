"""Fine-tuning on your own photographs: a new classifier on top of published or trained weights.

Loads every weight of `init_from` except the classifiers (main and aux), which
are re-initialized for the new number of classes (the paper: the extra linear
layer "enables adapting and fine-tuning our networks for other label sets"), and
takes `init_from`'s architecture and preprocessing (model, width, image size,
mean/std, evaluation resize ratio) unless the command line sets them. The data
is a folder of photographs, root/<split>/<class>/*.jpg with splits `train` and
`test`; training augments them as photographs (Inception crops, mirror images).
`freeze_backbone` trains the classifiers alone.

  python -m inception_jax convert torchvision tv_run
  python -m inception_jax train --config finetune \
      --config.init_from=tv_run --config.image_folder=/data/my_images
"""

import ml_collections

from inception_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.dataset = 'image_folder'
  config.image_folder = ''  # set on the command line
  config.init_from = ''  # set on the command line
  config.freeze_backbone = False
  config.batch_size = 16  # a few hundred photographs still make many steps per epoch
  config.eval_batch_size = 16
  config.shuffle_buffer = 2048
  config.crop = 'inception'
  config.random_flip = True  # a mirrored photograph shows the same class
  config.recipe = 'modern'
  config.optimizer = 'sgd'
  config.nesterov = True
  config.learning_rate = 0.01  # small: the weights start trained
  config.warmup_epochs = 0.0
  config.weight_decay = 1e-4
  config.num_epochs = 10.0
  config.log_every_steps = 10
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  return config
