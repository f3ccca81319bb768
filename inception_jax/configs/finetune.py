"""Fine-tuning: a new classifier on a new label set from a trained checkpoint.

Loads every weight of `init_from` except the classifiers (main and aux), which
are re-initialized for the new number of classes (the paper: the extra linear
layer "enables adapting and fine-tuning our networks for other label sets").
`freeze_backbone` trains the classifiers alone. The example fine-tunes the
default digits model on a folder of images (root/<split>/<class>/*.jpg).

  python -m inception_jax train --config finetune \
      --config.init_from=workdirs/default --config.image_folder=/data/my_images
"""

import ml_collections

from inception_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = 'image_folder'
  config.image_folder = ''  # set on the command line
  config.init_from = ''  # set on the command line
  config.freeze_backbone = False
  config.learning_rate = 0.01
  config.warmup_epochs = 0.0
  config.num_epochs = 10.0
  return config
