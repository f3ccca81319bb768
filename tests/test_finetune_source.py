"""`--config.init_from=RUN` takes RUN's architecture and preprocessing unless the command line
sets them; a forced field that makes RUN's weights not fit is one line naming it."""

import pathlib

import pytest

from inception_jax import cli
from inception_jax import config as config_lib
from inception_jax.serving import convert
from inception_jax.training import rundir
from helpers import random_variables

SOURCE = {'model': 'googlenet_bn_tiny', 'image_size': 40, 'mean_rgb': (10.0, 20.0, 30.0),
          'std_rgb': (2.0, 3.0, 4.0), 'eval_resize_ratio': 1.25}


@pytest.fixture(scope='module')
def source(tmp_path_factory) -> pathlib.Path:
  """A run of googlenet_bn_tiny at 40 px with its own mean/std, written as convert writes one."""
  config = config_lib.load('default')
  config.update(SOURCE)
  config.model_options.width = None  # the variant's own
  model = rundir.build_model(config, 2)
  return convert.write_run(tmp_path_factory.mktemp('source') / 'run', config,
                           random_variables(model, 40), ('x', 'y'))


def inherited(overrides: list[str]):
  config = config_lib.load('finetune', overrides)
  return cli._inherit_init_from(config, overrides)  # pylint: disable=protected-access


def test_the_source_architecture_and_preprocessing_are_taken_and_printed(source, capsys):
  config = inherited([f'--config.init_from={source}'])
  for field, value in SOURCE.items():
    assert config[field] == value, field
  assert config.model_options.width is None and config.batch_size == 16  # the rest: finetune's
  line = capsys.readouterr().out
  assert line.startswith(f'init_from {source}: took its model=googlenet_bn_tiny, ')
  assert 'image_size=40' in line and 'mean_rgb=(10.0, 20.0, 30.0)' in line


def test_fields_set_on_the_command_line_are_kept(source, capsys):
  config = inherited([f'--config.init_from={source}', '--config.image_size=48',
                      '--config.mean_rgb=(1.0, 1.0, 1.0)',
                      '--config.model_options.aux_heads=False'])
  assert (config.image_size, tuple(config.mean_rgb)) == (48, (1.0, 1.0, 1.0))
  assert config.model_options.aux_heads is False  # fits: the model then lacks layers, no more
  assert tuple(config.std_rgb) == SOURCE['std_rgb'] and config.model == SOURCE['model']
  assert 'image_size' not in capsys.readouterr().out


def test_a_forced_mismatch_is_one_line_naming_the_fields(source, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['train', '--config', 'finetune', '--workdir', str(tmp_path / 'run'),
              f'--config.init_from={source}', '--config.model_options.width=0.5',
              f'--config.image_folder={tmp_path}'])
  message = exit_info.value.code
  assert isinstance(message, str) and message.startswith('error: ') and '\n' not in message
  assert '--config.model_options.width=0.5 (source: the model default)' in message
  assert not (tmp_path / 'run').exists()
