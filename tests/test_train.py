"""The trainer end to end on the embedded digits: logs, checkpoints, resume, preemption."""

import gzip
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import flax
import jax
import ml_collections
import numpy as np
import pytest

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax.configs import default
from inception_jax.serving import evaluation
from inception_jax.training import checkpointing
from inception_jax.training import finetune
from inception_jax.training import loop
from inception_jax.training import metric_logging
from inception_jax.training import rundir
from helpers import make_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8


def tiny_config(data_dir: pathlib.Path, **fields):
  """The default config shrunk to googlenet_bn_shallow (with EMA) and a few steps of 32 digits.

  BatchNorm and EMA make the state hold every kind of leaf a resume must restore.
  """
  config = default.get_config()
  config.model = 'googlenet_bn_shallow'
  config.model_options.width = 1 / 8  # the variant's own width, explicit for the CLI
  config.ema_decay = 0.9
  config.data_dir = str(data_dir)
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = STEPS
  config.warmup_epochs = 0.0
  config.deterministic_data = True
  config.log_every_steps = 1
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  for key, value in fields.items():
    config[key] = value
  return config


def overrides(config) -> list[str]:
  """The command-line flags that turn the default config into `config`."""
  flat, base = _flatten(config.to_dict()), _flatten(default.get_config().to_dict())
  return [f'--config.{key}={value}' for key, value in flat.items() if value != base[key]]


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


@pytest.fixture(scope='module')
def trained(tmp_path_factory, digits_data_dir):
  """One uninterrupted run: (config, workdir, final eval metrics)."""
  workdir = tmp_path_factory.mktemp('run')
  config = tiny_config(digits_data_dir)
  result = loop.train_and_evaluate(config, workdir)
  return config, workdir, result


def final_params(workdir: pathlib.Path):
  return checkpointing.load_raw(workdir).state['params']


def assert_states_equal(workdir: pathlib.Path, reference_dir: pathlib.Path) -> None:
  """Every leaf of the newest states (params, batch_stats, opt_state, EMA, step, rng) equal."""
  got, want = (checkpointing.load_raw(d).state for d in (workdir, reference_dir))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert {'params', 'batch_stats', 'opt_state', 'ema_params', 'step', 'rng'} <= set(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_run_writes_checkpoints_logs_and_curves(trained):
  _, workdir, result = trained
  assert (workdir / 'config.json').exists()
  assert (workdir / metric_logging.CURVES_FILE).stat().st_size > 0
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  records = metric_logging.read_metrics(workdir)
  train_steps = [r['step'] for r in records if 'train_loss' in r]
  assert train_steps == list(range(1, STEPS + 1))
  assert [r['step'] for r in records if 'eval_top1' in r] == [4, 8]
  assert all(np.isfinite(r['train_loss']) for r in records if 'train_loss' in r)
  # Throughput and step time from the second step on (the first is the warm-up), and
  # images/s is the batch over the step time.
  timed = [r for r in records if 'train_images_per_s' in r]
  assert [r['step'] for r in timed] == list(range(2, STEPS + 1))
  for r in timed:
    assert r['train_step_s'] > 0
    assert r['train_images_per_s'] == pytest.approx(32 / r['train_step_s'])
  steps = checkpointing.create_manager(workdir / 'checkpoints', read_only=True).all_steps()
  assert sorted(steps) == [4, 6, 8]  # 2, 4, 6, 8 written; newest 3 kept (best eval: 4 or 8)
  assert result['count'] == 360  # every test digit counted once (360 = 5 batches of 64, padded)


def test_profile_steps_trace_into_tensorboard_and_a_slow_input_shows_as_waiting(
    digits_data_dir, tmp_path, monkeypatch, capsys):
  # Each batch arrives 1.5 s late, far longer than a step of this model takes.
  slow = lambda batches: (time.sleep(1.5) or batch for batch in batches)
  create = loop.pipeline.create_train_iterator
  monkeypatch.setattr(loop.pipeline, 'create_train_iterator',
                      lambda *args, **kwargs: slow(create(*args, **kwargs)))
  config = tiny_config(digits_data_dir, num_train_steps=4, log_every_steps=2,
                       eval_every_steps=100, checkpoint_every_steps=100, profile_steps='3:3')
  loop.train_and_evaluate(config, tmp_path)
  profile = tmp_path / 'tensorboard' / 'plugins' / 'profile'
  traces = list(profile.glob('*/*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
  with gzip.open(traces[0].parent / 'perfetto_trace.json.gz') as f:
    assert json.load(f)['traceEvents']
  out = capsys.readouterr().out
  assert re.search(r'^training step memory per device: arguments [\d.,]+ MiB, outputs '
                   r'[\d.,]+ MiB, temporaries [\d.,]+ MiB', out, re.M), out
  timed = [r for r in metric_logging.read_metrics(tmp_path) if 'train_step_s' in r]
  assert [r['step'] for r in timed] == [2, 4]
  assert all(r['train_data_wait_share'] > 0.5 for r in timed), timed
  assert re.search(r'^step 4/4 .* waiting for data (\d+)% ', out, re.M), out


def test_step_timer_shares_the_window_between_waiting_and_stepping():
  now = [0.0]
  clock = lambda: now[0]

  def batches(wait: float):
    while True:
      now[0] += wait
      yield None

  for wait, share in ((3.0, 0.75), (0.0, 0.0)):
    timer = metric_logging.StepTimer(batch_size=8, clock=clock)
    stream = batches(wait)
    for _ in range(2):
      timer.next_batch(stream)
      now[0] += 1.0  # the step itself
      timer.count_step()
    elapsed = 2 * (wait + 1.0)
    assert timer.scalars() == {'train_images_per_s': 16 / elapsed,
                               'train_step_s': elapsed / 2, 'train_data_wait_share': share}
    timer.restart()
    assert timer.scalars() == {}


def test_evaluate_reads_the_checkpoint_back(trained):
  config, workdir, result = trained
  report = evaluation.evaluate_paths([str(workdir)], 1, [config])
  member = report['models'][0]
  assert member['step'] == STEPS and member['count'] == 360
  assert member['top1'] == pytest.approx(result['top1'], abs=1e-6)
  assert member['loss'] == pytest.approx(result['loss'], rel=1e-4)


def test_evaluation_shows_its_progress_on_stderr(trained, monkeypatch, capsys):
  config, workdir, _ = trained
  monkeypatch.setattr(metric_logging, 'PROGRESS_EVERY_S', 0.0)  # a line per batch
  evaluation.evaluate_paths([str(workdir)], 1, [config])
  done = [re.search(r': (\d+)/360 images \| ', line).group(1)
          for line in capsys.readouterr().err.splitlines() if line.startswith('evaluating ')]
  assert done == ['64', '128', '192', '256', '320', '360']  # batches of 64, the last 40


def test_ensemble_averages_the_members_probabilities(trained, tmp_path):
  config = trained[0]
  members = [make_run(tmp_path / f'member{seed}', config, seed) for seed in (1, 2)]
  report = evaluation.evaluate_paths([str(m) for m in members], 1, [config, config])
  probs = [evaluation.predict_split(evaluation.load_model(m, config), config, 1)
           for m in members]
  labels = probs[0][1]
  average = (probs[0][0] + probs[1][0]) / 2
  assert not np.array_equal(probs[0][0].argmax(-1), probs[1][0].argmax(-1))  # they disagree
  assert report['ensemble']['top1'] == pytest.approx(np.mean(average.argmax(-1) == labels))
  nll = -np.mean(np.log(average[np.arange(len(labels)), labels]))
  assert report['ensemble']['loss'] == pytest.approx(nll, rel=1e-5)
  assert [m['top1'] for m in report['models']] == pytest.approx(
      [np.mean(p.argmax(-1) == labels) for p, _ in probs])


def test_each_ensemble_member_normalizes_with_its_own_runs_mean_and_std(trained, tmp_path):
  config = trained[0]
  other = ml_collections.ConfigDict(config.to_dict())
  other.mean_rgb, other.std_rgb = (20.0, 60.0, 100.0), (30.0, 40.0, 50.0)
  configs = (config, other)
  members = [make_run(tmp_path / f'member{i}', c, seed=i) for i, c in enumerate(configs)]
  report = evaluation.evaluate_paths([str(m) for m in members], 1, list(configs))
  alone = [evaluation.predict_split(evaluation.load_model(m, c), c, 1)
           for m, c in zip(members, configs)]  # each on its own, as its run evaluates it
  labels = alone[0][1]
  average = (alone[0][0] + alone[1][0]) / 2
  nll = -np.mean(np.log(average[np.arange(len(labels)), labels]))
  assert report['ensemble']['loss'] == pytest.approx(nll, rel=1e-5)
  assert report['models'][1]['loss'] == pytest.approx(
      -np.mean(np.log(alone[1][0][np.arange(len(labels)), labels])), rel=1e-5)


def test_ensemble_members_on_other_data_are_refused(trained, tmp_path):
  config, workdir, _ = trained
  other_config = tiny_config(pathlib.Path(config.data_dir), image_size=48)
  with pytest.raises(errors.UserError, match='ensemble members disagree on image_size'):
    evaluation.evaluate_paths([str(workdir), str(workdir)], 1, [config, other_config])


def _start_train(config, workdir, env) -> subprocess.Popen:
  """`python -m inception_jax train` of `config` in `workdir`, its output on one text pipe."""
  cmd = [sys.executable, '-m', 'inception_jax', 'train', '--workdir', str(workdir),
         *overrides(config)]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _run_cli(config, workdir, env, *, stop_after_step: int | None = None,
             stop_signal: int = signal.SIGKILL, delay: float = 0.0) -> tuple[int, str]:
  """Runs `python -m inception_jax train`; optionally signals it `delay` s after a step's line."""
  proc = _start_train(config, workdir, env)
  lines, start = [], 0
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith(f'{config.model} on '):  # the start line names a resumed step
        resumed = re.search(r'resuming at step (\d+)$', line.rstrip())
        start = int(resumed.group(1)) if resumed else 0
      if stop_after_step is not None and _step_done(line, start) >= stop_after_step:
        time.sleep(delay)
        proc.send_signal(stop_signal)
        stop_after_step = None
    return proc.wait(timeout=300), ''.join(lines)
  finally:
    if proc.poll() is None:
      proc.kill()


def _step_done(line: str, start: int) -> int:
  """The step a line of `train`'s output reports done; 0 for other lines.

  A launch's first step (`start` + 1) prints no progress line, only how long it took.
  """
  if line.startswith('first step took'):
    return start + 1
  progress = re.match(r'step (\d+)/', line)
  return int(progress.group(1)) if progress else 0


@pytest.mark.slow
def test_sigterm_then_kill9_then_resume_is_bit_identical(trained, tmp_path, subprocess_env):
  config, reference_dir, _ = trained
  workdir = tmp_path / 'run'
  config = tiny_config(pathlib.Path(config.data_dir))
  seed = int(os.environ.get('KILL_SEED', time.time_ns() % 10_000))
  rng = random.Random(seed)
  # A checkpoint exists from step 2 on; the kill lands anywhere after a later step's line.
  kill_step, kill_delay = rng.randrange(5, STEPS - 1), rng.uniform(0, 0.3)
  print(f'KILL_SEED={seed}: SIGKILL {kill_delay:.2f} s after step {kill_step}')

  code, output = _run_cli(config, workdir, subprocess_env, stop_after_step=3,
                          stop_signal=signal.SIGTERM)
  assert code == 0, output
  match = re.search(r'SIGTERM: saved a checkpoint at step (\d+)', output)
  assert match, output
  saved = checkpointing.create_manager(workdir / 'checkpoints', read_only=True).all_steps()
  assert int(match.group(1)) >= 3 and max(saved) == int(match.group(1)), saved
  compiled_step = _cached_train_steps(workdir)
  assert compiled_step, 'the first run left no compiled train step in <workdir>/xla_cache'

  code, output = _run_cli(config, workdir, subprocess_env, stop_after_step=kill_step,
                          delay=kill_delay)
  assert code == -signal.SIGKILL, f'KILL_SEED={seed}: the kill did not land\n{output}'
  assert f'resuming at step {max(saved)}' in output, output
  killed_at = checkpointing.create_manager(workdir / 'checkpoints', read_only=True).latest_step()

  code, output = _run_cli(config, workdir, subprocess_env)
  assert code == 0, output
  assert f'resuming at step {killed_at}' in output, output
  assert_states_equal(workdir, reference_dir)
  assert _cached_train_steps(workdir) == compiled_step  # loaded, never compiled again


@pytest.mark.slow
def test_notices_while_a_finished_run_exits_leave_exit_status_0(digits_data_dir, tmp_path,
                                                                   subprocess_env):
  # A host told to stop just as its run ends: the run has saved, so the notices must not
  # turn its exit into a death by SIGTERM while the interpreter shuts down (when Python
  # and JAX have dropped their handlers). Two steps will do: the exit is what matters.
  workdir = tmp_path / 'run'
  proc = _start_train(tiny_config(digits_data_dir, num_train_steps=2), workdir,
                      subprocess_env)
  lines, sent = [], 0
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith('curves: '):  # the run's last line, after its final save
        break
    while proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      sent += 1
      time.sleep(0.002)
    code = proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  output = ''.join(lines) + proc.stdout.read()
  assert lines[-1].startswith('curves: ') and sent >= 1, output
  assert code == 0, f'exit status {code} after {sent} SIGTERMs\n{output}'
  assert checkpointing.create_manager(workdir / 'checkpoints', read_only=True
                                      ).latest_step() == 2


def _cached_train_steps(workdir: pathlib.Path) -> dict[str, tuple[int, int]]:
  """The train step's files in the run's compilation cache: name → (mtime, size)."""
  cache = workdir / 'xla_cache'
  files = cache.iterdir() if cache.exists() else ()
  return {p.name: (p.stat().st_mtime_ns, p.stat().st_size)
          for p in files if p.name.startswith('jit_train_step-')}


def test_damaged_newest_checkpoint_falls_back_to_the_previous(trained, tmp_path, caplog):
  _, reference_dir, _ = trained
  workdir = tmp_path / 'copy'
  shutil.copytree(reference_dir, workdir)
  root = workdir / 'checkpoints'
  steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
  for f in (root / str(steps[-1]) / 'state').rglob('*'):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b'damaged')
  raw = checkpointing.load_raw(root / str(steps[-2]))
  manager = checkpointing.create_manager(root)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          raw.state)
  restored = checkpointing.restore_latest(manager, abstract, {'model': 'googlenet_bn_shallow'})
  assert restored.step == steps[-2]
  assert any('damaged' in r.getMessage() for r in caplog.records)
  assert (root / f'{steps[-1]}.damaged').is_dir()  # kept for inspection, out of the way
  assert manager.latest_step() == steps[-2]
  jax.tree.map(np.testing.assert_array_equal, restored.state, raw.state)


def test_finished_run_only_reevaluates(trained, tmp_path, capsys):
  config, reference_dir, result = trained
  workdir = tmp_path / 'finished'
  shutil.copytree(reference_dir, workdir)
  checkpoints = {p: p.stat().st_mtime_ns for p in (workdir / 'checkpoints').rglob('*')}
  capsys.readouterr()
  again = loop.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert f'resuming at step {STEPS}' in out and f'eval at step {STEPS}:' in out, out
  assert 'compiled the training step' not in out and not re.search(r'^step \d', out, re.M), out
  assert {p: p.stat().st_mtime_ns for p in (workdir / 'checkpoints').rglob('*')} == checkpoints
  assert again['top1'] == result['top1'] and again['count'] == result['count']
  assert again['loss'] == pytest.approx(result['loss'], rel=1e-6)


@pytest.mark.slow
def test_init_from_a_run_with_the_same_classes_starts_from_all_its_weights(trained, tmp_path,
                                                                           capsys):
  config, source_dir, _ = trained
  # A learning rate of 0 leaves the loaded parameters as they are: the run's final
  # parameters are then exactly what init_from loaded.
  tuned = tiny_config(pathlib.Path(config.data_dir), init_from=str(source_dir),
                      learning_rate=0.0, num_train_steps=2, eval_every_steps=2)
  loop.train_and_evaluate(tuned, tmp_path / 'tuned')
  assert 're-initialized' not in capsys.readouterr().out  # same classes: classifiers kept
  got, source = (checkpointing.load_raw(d).state for d in (tmp_path / 'tuned', source_dir))
  jax.tree.map(np.testing.assert_array_equal, got['params'], source['params'])
  assert int(got['step']) == 2


def test_checkpoint_of_another_model_is_refused(trained):
  config, workdir, _ = trained
  other = tiny_config(pathlib.Path(config.data_dir), model='googlenet_tiny')
  with pytest.raises(errors.CheckpointMismatchError, match='googlenet_tiny'):
    loop.train_and_evaluate(other, workdir)


def test_finetune_loads_backbone_and_reinitializes_classifiers(trained):
  _, workdir, _ = trained
  source = final_params(workdir)
  model = rundir.build_model(tiny_config(pathlib.Path('.')), 4)
  fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3),
                                                                        np.float32),
                                            train=False))['params']
  fresh = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), fresh)
  merged, kept = finetune.merge_pretrained(fresh, source)
  assert sorted(kept) == ['aux1/classifier/bias', 'aux1/classifier/kernel',
                          'aux2/classifier/bias', 'aux2/classifier/kernel',
                          'classifier/bias', 'classifier/kernel']
  flat_merged = flax.traverse_util.flatten_dict(merged, sep='/')
  flat_source = flax.traverse_util.flatten_dict(source, sep='/')
  for path, value in flat_merged.items():
    if path in kept:
      np.testing.assert_array_equal(value, 7.0)
    else:
      np.testing.assert_array_equal(value, flat_source[path])
  mask = flax.traverse_util.flatten_dict(finetune.classifier_mask(fresh), sep='/')
  assert sorted(p for p, trained_ in mask.items() if trained_) == sorted(kept)


def test_finetune_refuses_other_mismatches(trained):
  _, workdir, _ = trained
  source = final_params(workdir)
  wider = rundir.build_model(tiny_config(pathlib.Path('.')), 10).clone(width=0.25)
  fresh = jax.eval_shape(lambda: wider.init(jax.random.key(0), np.zeros((1, 32, 32, 3),
                                                                        np.float32),
                                            train=False))['params']
  with pytest.raises(ValueError, match='conv1/conv/kernel'):
    finetune.merge_pretrained(fresh, source)
  merged, kept = finetune.merge_pretrained(fresh, source, reinit_pattern='.*')
  assert 'conv1/conv/kernel' in kept
  assert jax.tree.map(np.shape, merged) == jax.tree.map(lambda s: s.shape, fresh)


def test_unknown_config_field_is_an_error_that_names_it():
  with pytest.raises(errors.ConfigError, match='batch_sise'):
    config_lib.load('default', ['--config.batch_sise=3'])
  config = config_lib.load('default', ['--config.batch_size=16', '--config.model_options.lrn=False'])
  assert config.batch_size == 16 and config.model_options.lrn is False


SHIPPED = ('default', 'imagenet_paper', 'imagenet_caffe_quick', 'imagenet_bn', 'imagenette',
           'cifar10', 'finetune')  # the configs users run by name


def test_configs_ship_by_name_and_a_file_path_still_works(tmp_path):
  assert config_lib.shipped_configs() == sorted(SHIPPED)
  path = tmp_path / 'mine.py'
  path.write_text('from inception_jax.configs import default\n\n\ndef get_config():\n'
                  '  config = default.get_config()\n  config.batch_size = 8\n  return config\n')
  assert config_lib.load(str(path)).batch_size == 8
  with pytest.raises(errors.NotFoundError, match="no shipped config named 'imagenet'.*"
                     'imagenet_bn, imagenet_caffe_quick'):
    config_lib.load('imagenet')


@pytest.mark.parametrize('name', SHIPPED)
def test_every_experiment_config_loads_and_builds_its_model(name):
  config = config_lib.load(name)
  model = rundir.build_model(config, 10)
  assert model.num_classes == 10
  assert config.batch_size % 8 == 0  # splits over 8 devices
