"""The base experiment configuration: every field a run can set, with its default.

Config files (those shipped in ``inception_jax/configs/``, run by name, or any
other ``get_config()`` file) start from :func:`get_base_config` and override what
they need. Any field can be overridden on the command line
(``--config.batch_size=256`` or ``--config.batch_size 256``); an unknown field,
in a file or on the command line, is an error.
"""

import importlib.util
import pathlib
import re
import traceback
from typing import Any, Callable, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_dict import placeholder

from inception_jax import errors

CONFIGS = pathlib.Path(__file__).resolve().parent / 'configs'  # the shipped configs, by name
CROPS = (1, 10, 144)  # crops per image at evaluation: centre; corners, centre, mirrors; Table 3's 144
# The names a field may take, checked at load (before any data set is read or anything
# compiles); the model layer resolves 'auto' (tests/test_cli.py checks the two agree).
CHOICES = {
    'model_options.ops': ('auto', 'xla', 'fast'),
    'dtype': ('auto', 'float32', 'bfloat16', 'float16'),
}
# Fields that count or divide: a step interval of 0 would divide by zero.
POSITIVE = ('image_size', 'batch_size', 'eval_batch_size', 'shuffle_buffer', 'grad_accum_steps',
            'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
            'distributed_timeout_seconds', 'model_options.width')
# A learning rate of 0 trains nothing but is a valid probe (loaded weights stay as they are).
NON_NEGATIVE = ('learning_rate', 'aux_weight', 'weight_decay', 'warmup_epochs', 'grad_clip_norm',
                'momentum')
FRACTIONS = ('label_smoothing', 'model_options.dropout_rate', 'model_options.aux_dropout_rate')


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the configuration with every field at its default value."""
  config = ml_collections.ConfigDict()

  # Model: a name accepted by `inception_jax.model.googlenet.create_model`.
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
      # (inception_jax/model/ops.py: same parameters and results) or 'xla' (XLA's own kernels).
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
  config.download = True  # a single-process run downloads and prepares a tfds data set it lacks
  config.train_split = 'train'
  config.eval_split = 'test'
  config.image_size = 224
  config.batch_size = 256  # global, over all devices and processes
  config.eval_batch_size = 256  # global
  config.shuffle_buffer = 16_384
  config.deterministic_data = False  # training stream a pure function of (seed, step)
  config.on_bad_image = 'skip'  # 'skip' (count and log) or 'fail' (refuse at start)
  # Images whose header declares more pixels are bad images, refused before decoding:
  # PIL's decompression-bomb warning bound: ~256 MiB per decode as RGB, per parallel decode.
  config.max_image_pixels = 89_478_485
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
  # resumed run loads them instead of compiling again.
  config.compilation_cache = True
  config.init_from = ''  # checkpoint to fine-tune from (work dir or step dir)
  config.init_from_reinit = ''  # regex of extra param paths allowed to stay fresh
  config.freeze_backbone = False

  # Several processes (see inception_jax/training/distributed.py). 'auto': when the three
  # fields below are set or JAX detects a cluster (TPU pods, SLURM, mpirun, k8s).
  config.distributed = 'auto'  # 'auto', 'on' or 'off'
  config.coordinator_address = ''  # host:port of process 0
  config.num_processes = 0  # 0 = detect
  config.process_id = -1  # -1 = detect
  config.distributed_timeout_seconds = 300  # peers must arrive (and keep beating) within this

  # 'START:END': a jax.profiler trace of steps START to END (both included) in
  # <workdir>/tensorboard/plugins/profile/; '' = none.
  config.profile_steps = ''
  config.lock()  # a misspelt field in a config file is an error, not a new field
  return config


def load(source: str | pathlib.Path | ml_collections.ConfigDict,
         overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a config (`config_path`), or takes one, and applies `--config.field=value`.

  Overrides are `--config.field=value` or `--config.field value`. Raises
  ConfigError with a message naming an unknown field (and the file it is in)
  or a bad value.
  """
  config = _from_file(config_path(source)) if not isinstance(
      source, ml_collections.ConfigDict) else source
  argv = ['inception_jax', *overrides]
  flag_values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict('config', config, flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    unparsed = flag_values(argv)
  except AttributeError as e:
    raise errors.ConfigError(f'{_unknown_field(e)} in {list(overrides)}; the fields are listed in '
                             'inception_jax/config.py.') from e
  except (flags.Error, KeyError, ValueError, TypeError) as e:
    raise errors.ConfigError(f'bad config override in {list(overrides)}: {e}') from e
  if unparsed[1:]:
    raise errors.ConfigError(f'unrecognized arguments {unparsed[1:]}: config fields are set as '
                             '--config.<field>=<value>.')
  validate(flag_values.config)
  return flag_values.config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value no run can use.

  Fields left at None (the model's default), or missing from an older run's config, pass.
  """
  for field, choices in CHOICES.items():
    value = _field(config, field)
    if value is not None and value not in choices:
      raise errors.ConfigError(f'{field}={value!r} is not known: use one of '
                               f'{", ".join(map(repr, choices))}.')
  for field in POSITIVE:
    _check_number(config, field, lambda v: v > 0, 'positive')
  for field in NON_NEGATIVE:
    _check_number(config, field, lambda v: v >= 0, '0 or more')
  for field in FRACTIONS:
    _check_number(config, field, lambda v: 0 <= v < 1, 'in [0, 1)')
  profile_range(config)


def profile_range(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """(first, last) step of `config.profile_steps` ('START:END'); None when it is ''."""
  text = (_field(config, 'profile_steps') or '').strip()
  if not text:
    return None
  first, _, last = text.partition(':')
  if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)):
    raise errors.ConfigError(f'profile_steps={config.profile_steps!r}: write START:END with '
                             '1 <= START <= END, e.g. --config.profile_steps=10:12.')
  return int(first), int(last)


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """The value of 'a.b' in `config`; None where the config lacks it (an older run's)."""
  value = config
  for name in dotted.split('.'):
    if name not in value:
      return None
    value = value[name]
  return value


def _check_number(config: ml_collections.ConfigDict, field: str,
                  ok: Callable[[float], bool], rule: str) -> None:
  """Raises ConfigError unless `field` is None or `ok` of its value."""
  value = _field(config, field)
  if value is not None and not ok(value):
    raise errors.ConfigError(f'{field} must be {rule}, got {value!r}: change '
                             f'--config.{field}.')


def shipped_configs() -> list[str]:
  """The names of the configs that ship with the package, e.g. 'default'."""
  return sorted(p.stem for p in CONFIGS.glob('*.py') if not p.stem.startswith('_'))


def config_path(source: str | pathlib.Path) -> pathlib.Path:
  """The file of a shipped config's name ('imagenet_paper'), or `source` as a path."""
  text = str(source)
  if text in shipped_configs():
    return CONFIGS / f'{text}.py'
  if not text.endswith('.py') and '/' not in text:
    raise errors.NotFoundError(
        f'no shipped config named {text!r}: use one of {", ".join(shipped_configs())} or '
        'the path of a get_config() file.')
  return pathlib.Path(source)


def _from_file(path: pathlib.Path) -> ml_collections.ConfigDict:
  """The ConfigDict a `get_config()` file returns; a misspelt field names the file."""
  if not path.is_file():
    raise errors.NotFoundError(f'config file {path} not found; the shipped configs are '
                               f'{", ".join(shipped_configs())}.')
  spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  except AttributeError as e:
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
             if pathlib.Path(frame.filename) == path]
    where = f'{path}, line {lines[-1]}' if lines else str(path)
    raise errors.ConfigError(f'{where}: {_unknown_field(e)}; the fields are listed in '
                             'inception_jax/config.py.') from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(f'{path}: get_config() returned {type(config).__name__}, not a '
                             'ml_collections.ConfigDict.')
  return config


def _unknown_field(error: AttributeError) -> str:
  """'unknown config field X (did you mean Y?)' from ml_collections' long message."""
  text = str(error).replace('\\', '')
  name = (re.search(r'Key "([\w.]+)" does not exist', text)
          or re.search(r"^\W*([\w.]+)", text))
  suggestion = re.search(r'Did you mean "([\w.]+)"', text)
  return f'unknown config field {name.group(1) if name else text!r}' + (
      f' (did you mean {suggestion.group(1)!r}?)' if suggestion else '')


def override_fields(overrides: Sequence[str]) -> set[str]:
  """The field names that `--config.field=value` overrides set, e.g. {'model_options.width'}.

  So that settings taken from elsewhere (a fine-tuning source) yield to the command line.
  """
  return {item.removeprefix('--config.').split('=', 1)[0] for item in overrides
          if item.startswith('--config.')}
