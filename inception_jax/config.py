"""The base experiment configuration: every field a run can set, with its default.

Experiment files under ``experiments/configs/`` start from :func:`get_base_config`
and override what they need. Any field can be overridden on the command line
(``--config.batch_size=256``); an unknown field is an error.
"""

import pathlib
from typing import Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_dict import placeholder

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'configs'
CROPS = (1, 10, 144)  # crops per image at evaluation: centre; corners, centre, mirrors; Table 3's 144


class ConfigError(ValueError):
  """A config file that is missing, or an override that names no field or misparses."""


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the configuration with every field at its default value."""
  config = ml_collections.ConfigDict()

  # Model: a name accepted by `inception_jax.models.create_model`.
  config.model = 'googlenet'
  # Overrides of the variant's defaults (None keeps the variant's value).
  config.model_options = ml_collections.ConfigDict({
      'width': placeholder(float),  # channel multiplier
      'init_scheme': placeholder(str),  # 'caffe', 'he' or 'torchvision'
      'aux_heads': placeholder(bool),
      'lrn': placeholder(bool),
      'naive_blocks': placeholder(bool),
      'dropout_rate': placeholder(float),
      'aux_dropout_rate': placeholder(float),
      # 'auto' (the model's default: 'fast' on CPU, 'xla' elsewhere), 'fast'
      # (inception_jax/ops.py: same parameters and results) or 'xla' (XLA's own kernels).
      'ops': placeholder(str),
  })
  # Compute dtype; parameters stay float32. 'auto': float32 on CPU, bfloat16 on GPU/TPU.
  config.dtype = 'float32'
  config.aux_weight = 0.3  # weight of each auxiliary classifier's loss
  config.label_smoothing = 0.0

  # Data.
  config.dataset = 'sklearn_digits'  # a tfds name, or 'image_folder'
  config.image_folder = ''  # root/<split>/<class>/* when dataset == 'image_folder'
  config.data_dir = ''  # tfds data_dir; '' = tfds default (~/tensorflow_datasets)
  config.manual_dir = ''  # tfds manual_dir (e.g. the ImageNet tars)
  config.train_split = 'train'
  config.eval_split = 'test'
  config.image_size = 224
  config.batch_size = 256  # global, over all devices and processes
  config.eval_batch_size = 256  # global
  config.shuffle_buffer = 16_384
  config.deterministic_data = False  # training stream a pure function of (seed, step)
  config.on_bad_image = 'skip'  # 'skip' (count and log) or 'fail' (refuse at start)
  config.mean_rgb = (123.675, 116.28, 103.53)  # on the 0..255 scale
  config.std_rgb = (58.395, 57.12, 57.375)
  config.crop = 'inception'  # 'inception' (random area/aspect crop) or 'center'
  config.crop_area_range = (0.08, 1.0)
  config.crop_aspect_range = (3 / 4, 4 / 3)
  config.random_flip = True
  config.color_distortion = False  # brightness, contrast, saturation, hue
  config.random_resize_method = False  # the paper's random choice of interpolation
  config.eval_resize_ratio = 256 / 224  # shorter side = image_size * ratio, then centre crop

  # Optimization: recipe is 'paper', 'caffe_quick' or 'modern'.
  config.recipe = 'paper'
  config.optimizer = 'sgd'  # 'sgd' or 'adamw' (the 'modern' recipe chooses)
  config.learning_rate = 0.01  # base, for the global batch
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 2e-4  # decoupled through optax, masked off biases/BN scales
  config.num_epochs = 90.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.warmup_epochs = 0.0
  config.lr_decay_factor = 0.96  # paper: x0.96 ...
  config.lr_decay_epochs = 8.0  # ... every 8 epochs
  config.poly_power = 0.5  # caffe_quick
  config.ema_decay = 0.0  # Polyak/EMA averaging of params; 0 = off
  config.grad_accum_steps = 1
  config.grad_clip_norm = 0.0  # 0 = off

  # Run.
  config.seed = 0
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  # `python -m inception_jax train` keeps the compiled steps in <workdir>/xla_cache, so a
  # resumed run loads them instead of compiling again (about 20 s for a 224-px step on 2 cores).
  config.compilation_cache = True
  config.init_from = ''  # checkpoint to fine-tune from (work dir or step dir)
  config.init_from_reinit = ''  # regex of extra param paths allowed to stay fresh
  config.freeze_backbone = False

  # Several processes (see inception_jax/distributed.py). 'auto': when the three
  # fields below are set or JAX detects a cluster (TPU pods, SLURM, mpirun, k8s).
  config.distributed = 'auto'  # 'auto', 'on' or 'off'
  config.coordinator_address = ''  # host:port of process 0
  config.num_processes = 0  # 0 = detect
  config.process_id = -1  # -1 = detect
  config.distributed_timeout_seconds = 300  # peers must arrive (and keep beating) within this
  return config


def load(source: str | pathlib.Path | ml_collections.ConfigDict,
         overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a `get_config()` file (or takes a config) and applies `--config.field=value`.

  Raises ConfigError with a message naming an unknown field or a bad value.
  """
  is_file = not isinstance(source, ml_collections.ConfigDict)
  if is_file and not pathlib.Path(source).exists():
    raise ConfigError(f'config file {source} not found; experiment configs live in {CONFIGS}.')
  bad = [o for o in overrides if not o.startswith('--config.')]
  if bad:
    raise ConfigError(f'unrecognized arguments {bad}: config fields are set as '
                      '--config.<field>=<value>.')
  argv = ['inception_jax', *overrides]
  flag_values = flags.FlagValues()
  try:
    if is_file:
      config_flags.DEFINE_config_file('config', str(source), flag_values=flag_values,
                                      lock_config=True, sys_argv=argv)
    else:
      config_flags.DEFINE_config_dict('config', source, flag_values=flag_values,
                                      lock_config=True, sys_argv=argv)
    flag_values(argv)
  except AttributeError as e:
    raise ConfigError(f'unknown config field {e} in {list(overrides)}; the fields are '
                      'listed in inception_jax/config.py.') from e
  except (flags.Error, KeyError, ValueError, TypeError) as e:
    raise ConfigError(f'bad config override in {list(overrides)}: {e}') from e
  return flag_values.config
