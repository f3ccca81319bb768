"""The command line on bad input: one line that names the cause and the fix, at start.

Commands run in this process through `cli.main(argv)`: a refusal is a SystemExit
whose message Python prints alone (no traceback) with exit status 1; one case
runs as a real process to check exactly that. Run directories are written with
random weights (`convert.write_run`), so nothing here trains a model.
"""

import json
import logging
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest

import inception_jax
from inception_jax.configs import default
from helpers import make_run
from test_train import overrides
from inception_jax import cli
from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax.model import googlenet
from inception_jax.model import ops
from inception_jax.training import checkpointing
from inception_jax.training import metric_logging

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = 'default'


def tiny(data_dir: pathlib.Path, **fields):
  """The default config at googlenet_bn_shallow's size on the digits; `fields` override."""
  config = default.get_config()
  config.model = 'googlenet_bn_shallow'
  config.model_options.width = 1 / 8
  config.data_dir = str(data_dir)
  config.batch_size = config.eval_batch_size = 32
  config.num_train_steps = 4
  config.warmup_epochs = 0.0
  for key, value in fields.items():
    config[key] = value
  return config


def refusal(argv: list[str]) -> str:
  """The message `cli.main(argv)` exits with; fails unless it is a one-line-style refusal."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  message = exit_info.value.code
  assert isinstance(message, str) and message.startswith('error: '), message
  return message


def write_png(path: pathlib.Path, value: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(path)


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> pathlib.Path:
  """An image folder of 3 classes: train/ (4 images each) and test/ (2 each)."""
  root = tmp_path_factory.mktemp('folder')
  for split, count in (('train', 4), ('test', 2)):
    for label, name in enumerate(('a', 'b', 'c')):
      for i in range(count):
        write_png(root / split / name / f'{i}.png', 60 * label + 10 * i)
  return root


def folder_config(root: pathlib.Path, **fields):
  return tiny(pathlib.Path(''), dataset='image_folder', image_folder=str(root), batch_size=4,
              eval_batch_size=4, **fields)


def test_resuming_with_another_model_is_refused_at_start_and_leaves_config_json(
    digits_data_dir, tmp_path, capsys):
  run = make_run(tmp_path / 'run', tiny(digits_data_dir))
  saved = (run / 'config.json').read_bytes()
  message = refusal(['train', '--workdir', str(run), '--config', DEFAULT,
                     *overrides(tiny(digits_data_dir, model='googlenet_tiny'))])
  assert "model: checkpoint has 'googlenet_bn_shallow', config asks for 'googlenet_tiny'" in message
  assert 'Use another work directory' in message
  assert (run / 'config.json').read_bytes() == saved
  assert 'compiled' not in capsys.readouterr().out  # refused before compiling anything


@pytest.mark.parametrize('field,value,shown', [
    ('image_size', 48, "image_size: checkpoint has 32, config asks for 48"),
    ('dataset', 'image_folder', "dataset: checkpoint has 'sklearn_digits', config asks for "
                                "'image_folder'"),
])
def test_resuming_with_other_data_is_refused_at_start(digits_data_dir, folder, tmp_path, field,
                                                      value, shown):
  run = make_run(tmp_path / 'run', tiny(digits_data_dir))
  saved = (run / 'config.json').read_bytes()
  changed = (tiny(digits_data_dir, image_size=48) if field == 'image_size'
             else folder_config(folder))
  assert changed[field] == value
  message = refusal(['train', '--workdir', str(run), *overrides(changed)])
  assert shown in message, message
  assert (run / 'config.json').read_bytes() == saved


@pytest.mark.slow
def test_all_checkpoints_damaged_is_refused_and_leaves_config_json(digits_data_dir, tmp_path):
  config = tiny(digits_data_dir)
  run = make_run(tmp_path / 'run', config)
  saved = (run / 'config.json').read_bytes()
  for f in (run / 'checkpoints' / '0' / 'state').rglob('*'):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b'damaged')
  message = refusal(['train', '--workdir', str(run), *overrides(config)])
  assert 'no checkpoint in' in message and 'could be restored' in message
  assert 'Move the directory aside to start over' in message
  assert (run / 'config.json').read_bytes() == saved


def test_misspelt_field_in_a_config_file_names_the_field_and_the_line(tmp_path):
  path = tmp_path / 'typo.py'
  path.write_text('from inception_jax.configs import default\n\n\ndef get_config():\n'
                  '  config = default.get_config()\n  config.learnig_rate = 0.1\n'
                  '  return config\n')
  message = refusal(['train', '--config', str(path), '--workdir', str(tmp_path / 'run')])
  assert f"{path}, line 6: unknown config field 'learnig_rate'" in message
  assert "did you mean 'learning_rate'" in message
  assert not (tmp_path / 'run').exists()


def test_config_that_does_not_fit_exits_1_with_our_lines_only_and_no_traceback(
    tmp_path, subprocess_env):
  # The default config warms up for one epoch (22 steps): 20 steps cannot hold it. The
  # refusal comes after the embedded data set is built into an empty data_dir, so the
  # output is also the whole start of a first run: our lines only, no TensorFlow, absl
  # or tfds notices, warnings or progress bars.
  data_dir = tmp_path / 'data'
  done = subprocess.run(
      [sys.executable, '-m', 'inception_jax', 'train', '--workdir', str(tmp_path / 'run'),
       f'--config.data_dir={data_dir}', '--config.num_train_steps=20'],
      cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stdout + done.stderr
  assert done.stdout.splitlines() == [
      f"config default; work directory {tmp_path / 'run'}",
      f"preparing the embedded data set 'sklearn_digits' in {data_dir}/sklearn_digits/1.0.0 "
      '(once)'], done.stdout + done.stderr
  assert done.stderr.splitlines() == [
      'error: the warm-up (22 updates) must be shorter than the run (20 updates); lower '
      'warmup_epochs or train longer.'], done.stderr


@pytest.mark.parametrize('override, expected', [
    ('--config.model_options.ops=bogus', "model_options.ops='bogus' is not known: use one of "
     "'auto', 'xla', 'fast'."),
    ('--config.batch_size=0', 'batch_size must be positive, got 0'),
    ('--config.eval_every_steps=0', 'eval_every_steps must be positive, got 0'),
    ('--config.dtype=float8', "dtype='float8' is not known"),
    ('--config.label_smoothing=1.5', 'label_smoothing must be in [0, 1), got 1.5'),
    ('--config.model_options.width=-1', 'model_options.width must be positive, got -1.0'),
    ('--config.profile_steps=5:2', "profile_steps='5:2': write START:END with 1 <= START <= "
     'END'),
])
def test_a_bad_value_is_refused_at_load_in_one_line(override, expected, tmp_path):
  message = refusal(['train', '--workdir', str(tmp_path / 'run'), override])
  assert message == f'error: {expected}' or message.startswith(f'error: {expected}'), message
  assert '\n' not in message
  assert not (tmp_path / 'run').exists()


def test_the_names_checked_at_load_are_those_the_model_resolves():
  assert set(config_lib.CHOICES['model_options.ops']) == {ops.AUTO, *ops.OPS}
  assert set(config_lib.CHOICES['dtype']) == {googlenet.AUTO_DTYPE, *googlenet.DTYPES}


def test_override_with_a_space_before_its_value_is_taken(digits_data_dir, tmp_path):
  message = refusal(['train', '--workdir', str(tmp_path / 'run'),
                     f'--config.data_dir={digits_data_dir}', '--config.batch_size', '2000'])
  assert 'batch_size 2000 exceeds the train split (1437 examples)' in message


def test_bad_image_with_on_bad_image_fail_is_refused_before_compiling(folder, tmp_path,
                                                                      capsys):
  root = tmp_path / 'folder'
  for path in folder.rglob('*.png'):
    write_png(root / path.relative_to(folder), 0)
  (root / 'train' / 'b' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a JPEG')
  message = refusal(['train', '--workdir', str(tmp_path / 'run'),
                     *overrides(folder_config(root, on_bad_image='fail'))])
  assert "1 bad image file(s) in split 'train'" in message and 'broken.jpg' in message
  assert "set on_bad_image='skip'" in message
  out = capsys.readouterr().out
  assert 'compiled' not in out and 'step' not in out, out


@pytest.mark.slow
def test_nonfinite_loss_names_the_step_it_first_appeared_and_saves_nothing_after(
    digits_data_dir, tmp_path):
  # A huge learning rate blows the weights up after the first update; the loss or a
  # norm turns non-finite within a few steps. With log lines every step, the run
  # also checks every step, so it names the first such step: the reference.
  config = tiny(digits_data_dir, learning_rate=1e30, num_train_steps=12, log_every_steps=1,
                checkpoint_every_steps=1, eval_every_steps=100)
  reference = refusal(['train', '--workdir', str(tmp_path / 'each'), *overrides(config)])
  first = int(reference.split('step ')[1].split(':')[0])
  assert 1 <= first < 6, reference
  logged = [r['step'] for r in metric_logging.read_metrics(tmp_path / 'each')
            if 'train_loss' in r]
  assert logged == list(range(1, first))  # every step before it was finite and logged
  steps = checkpointing.create_manager(tmp_path / 'each' / 'checkpoints',
                                       read_only=True).all_steps()
  assert max(steps, default=0) < first  # nothing non-finite saved

  config.log_every_steps = config.checkpoint_every_steps = 6
  message = refusal(['train', '--workdir', str(tmp_path / 'sparse'), *overrides(config)])
  assert message.startswith(f'error: step {first}: '), (message, reference)
  assert 'Lower learning_rate' in message
  assert not list((tmp_path / 'sparse' / 'checkpoints').glob('[0-9]*'))


def test_evaluate_of_an_empty_split_is_refused(folder, tmp_path):
  root = tmp_path / 'folder'
  for path in (folder / 'train').rglob('*.png'):
    write_png(root / path.relative_to(folder), 0)
  for name in ('a', 'b', 'c'):
    (root / 'test' / name).mkdir(parents=True)
  run = make_run(tmp_path / 'run', folder_config(root))
  message = refusal(['evaluate', str(run)])
  assert "split 'test' of" in message and 'has no examples' in message


def test_evaluate_of_a_split_with_no_readable_image_is_refused_without_orbax_lines(
    folder, tmp_path, caplog):
  root = tmp_path / 'folder'
  for path in (folder / 'train').rglob('*.png'):
    write_png(root / path.relative_to(folder), 0)
  for name in ('a', 'b', 'c'):
    (root / 'test' / name).mkdir(parents=True)
    (root / 'test' / name / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a JPEG')
  run = make_run(tmp_path / 'run', folder_config(root))
  with caplog.at_level('WARNING'):  # the command line's level
    message = refusal(['evaluate', str(run)])
  assert message.startswith("error: no example of split 'test' could be read"), message
  assert not [r.getMessage() for r in caplog.records
              if 'orbax' in r.pathname and r.levelno >= logging.WARNING]


def test_predict_prints_our_lines_only_and_fails_when_nothing_is_classified(
    digits_data_dir, tmp_path, subprocess_env):
  run = make_run(tmp_path / 'run', tiny(digits_data_dir, image_size=32))
  missing = tmp_path / 'missing.png'
  done = subprocess.run(
      [sys.executable, '-m', 'inception_jax', 'predict', str(run), str(missing)],
      cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stdout + done.stderr
  assert done.stdout == ''
  assert done.stderr.splitlines() == [
      f'skipped {missing}: no such file',
      'error: no image could be classified (1 skipped): give image files, or folders holding '
      'some.'], done.stderr


def test_evaluate_on_a_data_set_with_other_classes_is_refused(digits_data_dir, folder,
                                                              tmp_path):
  run = make_run(tmp_path / 'run', tiny(digits_data_dir))
  message = refusal(['evaluate', str(run), '--config.dataset=image_folder',
                     f'--config.image_folder={folder}', '--config.eval_batch_size=4'])
  assert 'was trained on 10 classes, but image_folder has 3' in message


@pytest.mark.slow
def test_evaluate_skips_a_corrupt_image_of_the_split_or_refuses_it(folder, tmp_path, capsys):
  root = tmp_path / 'folder'
  for path in folder.rglob('*.png'):
    write_png(root / path.relative_to(folder), 0)
  (root / 'test' / 'a' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a JPEG')
  run = make_run(tmp_path / 'run', folder_config(root))
  cli.main(['evaluate', str(run), '--json', str(tmp_path / 'report.json')])
  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['models'][0]['count'] == 6  # the 6 good test images, the broken one left out
  message = refusal(['evaluate', str(run), '--config.on_bad_image=fail'])
  assert "1 bad image file(s) in split 'test'" in message and 'broken.jpg' in message


def test_evaluate_and_plot_through_the_command_line(digits_data_dir, tmp_path, capsys):
  run = make_run(tmp_path / 'run', tiny(digits_data_dir))
  cli.main(['evaluate', str(run), '--json', str(tmp_path / 'report.json')])
  out = capsys.readouterr().out
  report = json.loads((tmp_path / 'report.json').read_text())
  member = report['models'][0]
  assert member['count'] == 360 and member['step'] == 0
  assert f"| {run} (step 0) | 1 | {member['top1']:.4f} |" in out
  writer = metric_logging.MetricWriter(run, enabled=True)
  for step in (1, 2, 3):
    writer.write(step, {'train_loss': 2.0 / step, 'train_learning_rate': 0.1})
  writer.write(3, {'eval_top1': 0.5})
  writer.close()
  cli.main(['plot', str(run)])
  assert f'wrote {run / metric_logging.CURVES_FILE}' in capsys.readouterr().out
  assert (run / metric_logging.CURVES_FILE).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_plot_of_a_directory_without_metrics_is_refused(tmp_path):
  assert 'has no metrics to plot' in refusal(['plot', str(tmp_path)])


def test_space_separated_override_parses_like_the_equals_form():
  spaced = config_lib.load(DEFAULT, ['--config.batch_size', '128',
                                     '--config.model_options.width', '0.25'])
  assert spaced.batch_size == 128 and spaced.model_options.width == 0.25
  with pytest.raises(errors.ConfigError, match=r"unrecognized arguments \['extra'\]"):
    config_lib.load(DEFAULT, ['--config.batch_size', '128', 'extra'])


COMMANDS = ('train', 'evaluate', 'predict', 'export', 'convert', 'benchmark', 'summary', 'plot',
            'prepare')


def test_help_of_every_command_loads_neither_jax_nor_tensorflow_nor_torch(subprocess_env):
  # argparse prints each --help and exits; the modules loaded by then are listed after it.
  code = textwrap.dedent('''\
      import sys
      from inception_jax import cli
      for command in sys.argv[1:]:
        try:
          cli.main([command, '--help'])
        except SystemExit as e:
          assert e.code == 0, (command, e.code)
      print('loaded:', sorted(m for m in ('jax', 'tensorflow', 'torch', 'flax') if m in sys.modules))
      ''')
  done = subprocess.run([sys.executable, '-c', code, *COMMANDS], cwd=ROOT, env=subprocess_env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  for command in COMMANDS:
    assert f'usage: python -m inception_jax {command}' in done.stdout
  assert done.stdout.rstrip().endswith('loaded: []'), done.stdout[-500:]


def test_version_is_the_package_version(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['--version'])
  assert exit_info.value.code == 0
  assert capsys.readouterr().out == f'python -m inception_jax {inception_jax.__version__}\n'


def test_the_light_parser_states_the_choices_and_defaults_its_commands_use():
  # cli.py spells these out so that --help imports neither module: they must stay the same.
  from inception_jax.serving import export, inference  # pylint: disable=import-outside-toplevel
  parser = cli.build_parser()
  commands = next(a for a in parser._actions if a.dest == 'command').choices  # pylint: disable=protected-access
  options = {command: {a.dest: a for a in commands[command]._actions}  # pylint: disable=protected-access
             for command in ('export', 'predict')}
  assert sorted(options['export']['input'].choices) == sorted(export.INPUT_KINDS)
  assert options['predict']['buckets'].default is None  # inference.DEFAULT_BUCKETS then
  assert f"(default {','.join(map(str, inference.DEFAULT_BUCKETS))})" in (
      options['predict']['buckets'].help)


@pytest.mark.parametrize('argv, expected', [
    (['convert', 'torchvision', 'w.pth', '--no-transform-input', 'run'],
     dict(weights='w.pth', out='run', transform_input=False)),
    (['convert', 'torchvision', '--no-transform-input', 'w.pth', 'run'],
     dict(weights='w.pth', out='run', transform_input=False)),
    (['convert', 'caffe', 'run'],
     dict(caffemodel=None, out='run')),
    (['predict', 'run', 'a.png', '--top-k', '3', 'b.png'],
     dict(path='run', images=['a.png', 'b.png'], top_k=3)),
    (['export', 'run', '--input', 'float', 'model.jax'],
     dict(path='run', out='model.jax', input='float')),
])
def test_options_may_come_between_the_files(argv, expected):
  # As with any command-line tool: `convert torchvision W.pth --no-transform-input OUT`
  # and `predict RUN a.png --top-k 3 b.png` mean what they say.
  args, overrides = cli.build_parser().parse_known_args(argv)
  assert overrides == []
  assert {name: getattr(args, name) for name in expected} == expected
