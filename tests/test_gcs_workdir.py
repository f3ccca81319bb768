"""Work directories on gs://, against a local GCS emulator (tests/gcs_emulator.py).

The command line reaches gs:// through etils.epath on fsspec/gcsfs
(EPATH_USE_TF=false) and orbax's arrays through tensorstore; both are pointed
at the emulator by environment variables. TensorFlow's own GCS client cannot be
pointed at an emulator, so nothing here covers it (the trainer does not use it
for gs:// work directories).
"""

import json
import os
import pathlib
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train import overrides, tiny_config

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = 'bucket'
STEPS = 16
CLI_TIMEOUT = 600  # seconds, per command


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Emulator:
  """The emulator's URL and a few JSON-API reads that bypass the code under test."""

  def __init__(self, url: str):
    self.url = url

  def objects(self, prefix: str = '') -> list[str]:
    query = '?prefix=' + urllib.parse.quote(prefix, safe='') if prefix else ''
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{BUCKET}/o{query}', timeout=30) as r:
      return sorted(item['name'] for item in json.load(r).get('items', []))

  def read(self, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media',
                                timeout=30) as r:
      return r.read()


@pytest.fixture(scope='module')
def emulator():
  """The patched emulator on a free 127.0.0.1 port with an empty bucket; stopped at the end."""
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  proc = subprocess.Popen(['timeout', '1800', sys.executable, str(ROOT / 'tests' / 'gcs_emulator.py'),
                           str(port), BUCKET], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
  try:
    deadline = time.monotonic() + 60
    while True:
      try:
        urllib.request.urlopen(f'{url}/storage/v1/b/{BUCKET}/o', timeout=2).close()
        break
      except OSError:
        if proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f'the GCS emulator did not start (exit code {proc.poll()})')
        time.sleep(0.2)
    yield Emulator(url)
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait(timeout=10)


def _gcs_environment(url: str) -> dict[str, str]:
  return {
      'STORAGE_EMULATOR_HOST': url,  # gcsfs (epath, orbax's metadata)
      'TENSORSTORE_GCS_HTTP_URL': url,  # tensorstore (orbax's arrays)
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # else a 60 s gRPC bucket-type probe
      'FSSPEC_GCS_TOKEN': 'anon',
  }


@pytest.fixture(scope='module')
def gcs_env(emulator):
  """This process's environment pointed at the emulator, for the in-process tests."""
  saved = dict(os.environ)
  os.environ.update(_gcs_environment(emulator.url), EPATH_USE_TF='false')
  yield emulator
  os.environ.clear()
  os.environ.update(saved)


class Cli:
  """Runs `python -m inception_jax` in a scratch folder with the emulator's environment."""

  def __init__(self, url: str, cwd: pathlib.Path, cache: pathlib.Path):
    self.cwd = cwd
    self.env = {**os.environ, **_gcs_environment(url), 'PYTHONUNBUFFERED': '1',
                'PYTHONPATH': str(ROOT), 'XDG_CACHE_HOME': str(cache)}
    self.env.pop('EPATH_USE_TF', None)  # the CLI sets it itself

  def run(self, *args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, '-m', 'inception_jax', *args], cwd=self.cwd,
                          env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=CLI_TIMEOUT, check=False)
    return proc.returncode, proc.stdout

  def run_until(self, stop, *args: str) -> tuple[int, str]:
    """Runs a command; SIGKILLs it once `stop()` holds (checked between output lines)."""
    proc = subprocess.Popen([sys.executable, '-m', 'inception_jax', *args], cwd=self.cwd,
                            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True)
    reader.start()
    output = []
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
      while proc.poll() is None and time.monotonic() < deadline:
        try:
          output.append(lines.get(timeout=0.3))
        except queue.Empty:
          pass
        if stop():
          proc.send_signal(signal.SIGKILL)
          break
      code = proc.wait(timeout=60)
      reader.join(timeout=10)
      while not lines.empty():
        output.append(lines.get())
      return code, ''.join(output)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def _committed_steps(emulator: Emulator, prefix: str) -> list[int]:
  """Steps under `prefix` (e.g. 'run/checkpoints/') whose save was committed."""
  names = emulator.objects(prefix)
  return sorted(int(n[len(prefix):].split('/')[0]) for n in names
                if n.endswith('/commit_success.txt') and n[len(prefix):].split('/')[0].isdigit()
                and n.count('/') == prefix.count('/') + 1)


def _event_tags_and_steps(data: bytes) -> dict[str, list[int]]:
  """{tag: steps} of the scalars in one TensorBoard event file (TFRecord of Event protos)."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
  found: dict[str, list[int]] = {}
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4
    for value in event.summary.value:
      found.setdefault(value.tag, []).append(event.step)
  return found


def test_train_kill_resume_evaluate_export_on_gs(emulator, tmp_path, digits_data_dir):
  """The CLI end to end on gs://bucket/run: kill -9 after a checkpoint, resume, read back."""
  config = tiny_config(digits_data_dir, num_train_steps=STEPS, eval_every_steps=8)
  cwd, cache = tmp_path / 'cwd', tmp_path / 'cache'
  cwd.mkdir()
  cli = Cli(emulator.url, cwd, cache)
  workdir = f'gs://{BUCKET}/run'
  train = ['train', '--workdir', workdir, *overrides(config)]

  code, output = cli.run_until(lambda: bool(_committed_steps(emulator, 'run/checkpoints/')),
                               *train)
  assert code == -signal.SIGKILL, f'the run ended before a checkpoint was committed:\n{output}'
  killed_at = _committed_steps(emulator, 'run/checkpoints/')
  assert killed_at and max(killed_at) < STEPS, killed_at
  metrics_after_kill = emulator.read('run/metrics.jsonl').decode()
  assert metrics_after_kill.strip(), output

  code, output = cli.run(*train)
  assert code == 0, output
  assert 'resuming at step' in output, output
  assert f'work directory {workdir}' in output, output

  # Everything of the run is in the bucket.
  names = emulator.objects('run/')
  saved_config = json.loads(emulator.read('run/config.json'))
  assert saved_config['model'] == 'googlenet_bn_shallow'
  assert saved_config['num_train_steps'] == STEPS
  metrics_text = emulator.read('run/metrics.jsonl').decode()
  assert metrics_text.startswith(metrics_after_kill)  # the first run's lines, kept
  records = [json.loads(line) for line in metrics_text.splitlines()]
  assert len(records) > len(metrics_after_kill.splitlines())  # and the second run's after them
  assert {r['step'] for r in records if 'train_loss' in r} == set(range(1, STEPS + 1))
  assert [r['step'] for r in records if 'eval_top1' in r][-1] == STEPS
  events = [n for n in names if n.startswith('run/tensorboard/events.out.tfevents.')]
  assert len(events) >= 2, names  # one event file per run
  steps_by_tag: dict[str, set[int]] = {}
  for name in events:
    for tag, steps in _event_tags_and_steps(emulator.read(name)).items():
      steps_by_tag.setdefault(tag, set()).update(steps)
  assert STEPS in steps_by_tag['train_loss'] and STEPS in steps_by_tag['eval_top1']
  assert emulator.read('run/curves.png').startswith(b'\x89PNG')
  committed = _committed_steps(emulator, 'run/checkpoints/')
  assert STEPS in committed and set(killed_at) & set(range(1, STEPS)), committed
  assert not [n for n in names if n.startswith('run/xla_cache/')]  # the cache stays local
  assert list((cache / 'inception_jax' / 'xla_cache').rglob('jit_train_step-*'))
  # Nothing went to a local folder named like the URI (pathlib makes 'gs:/bucket/run').
  assert not (cwd / 'gs:').exists() and not (ROOT / 'gs:').exists()
  assert sorted(p.name for p in cwd.iterdir()) == []

  code, output = cli.run('evaluate', workdir, '--json', f'{workdir}/eval.json')
  assert code == 0, output
  assert f'| {workdir} (step {STEPS}) | 1 |' in output, output
  report = json.loads(emulator.read('run/eval.json'))
  assert report['models'][0]['step'] == STEPS and report['models'][0]['count'] == 360

  artifact = tmp_path / 'export' / 'model.jax'
  code, output = cli.run('export', workdir, str(artifact))
  assert code == 0, output
  assert artifact.stat().st_size > 0
  sidecar = json.loads(pathlib.Path(f'{artifact}.json').read_text())
  assert sidecar['checkpoint'] == workdir and sidecar['step'] == STEPS


def _tiny_state(offset: float):
  return {'params': {'w': jnp.arange(6.0).reshape(2, 3) + offset, 'b': jnp.ones((3,)) * offset},
          'step': jnp.array(int(offset), jnp.int32)}


def test_damaged_checkpoint_is_moved_aside_on_gs(gcs_env, caplog):
  """restore_latest on gs://: the damaged newest step becomes '<step>.damaged', the one before loads."""
  # pylint: disable=import-outside-toplevel
  from inception_jax.training import checkpointing
  from inception_jax.training import rundir
  emulator = gcs_env
  workdir = f'gs://{BUCKET}/unit'
  meta = {'model': 'googlenet_tiny', 'num_classes': 3}
  manager = checkpointing.create_manager(f'{workdir}/checkpoints')
  assert str(manager.directory) == f'{workdir}/checkpoints'  # not made a local path
  for step in (1, 2):
    checkpointing.save(manager, step, _tiny_state(step), meta)
  manager.wait_until_finished()
  manager.close()
  assert _committed_steps(emulator, 'unit/checkpoints/') == [1, 2]

  # find_checkpoint / load_raw (evaluate, predict, export, --config.init_from) read gs://.
  raw = checkpointing.load_raw(workdir)
  assert raw.step == 2 and raw.meta == meta
  np.testing.assert_array_equal(raw.state['params']['w'], np.asarray(_tiny_state(2)['params']['w']))
  assert str(rundir.workdir_of(f'{workdir}/checkpoints/1')) == workdir

  for name in emulator.objects('unit/checkpoints/2/state/'):
    if emulator.read(name):
      body = b'damaged'
      request = urllib.request.Request(
          f'{emulator.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name='
          + urllib.parse.quote(name, safe=''), data=body, method='POST')
      urllib.request.urlopen(request, timeout=30).close()

  manager = checkpointing.create_manager(f'{workdir}/checkpoints')
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _tiny_state(0))
  restored = checkpointing.restore_latest(manager, abstract, {'model': 'googlenet_tiny'})
  manager.close()
  assert restored.step == 1
  np.testing.assert_array_equal(restored.state['params']['w'],
                                np.asarray(_tiny_state(1)['params']['w']))
  assert any('damaged' in r.getMessage() for r in caplog.records)
  names = emulator.objects('unit/checkpoints/')
  assert any(n.startswith('unit/checkpoints/2.damaged/state/') for n in names), names
  assert not any(n.startswith('unit/checkpoints/2/') for n in names), names
  assert checkpointing.create_manager(f'{workdir}/checkpoints', read_only=True).all_steps() == [1]


def test_config_round_trip_on_gs(gcs_env):
  # pylint: disable=import-outside-toplevel
  from inception_jax.training import rundir
  config = tiny_config(pathlib.Path('/data'))
  rundir.save_config(config, f'gs://{BUCKET}/cfg')
  assert gcs_env.objects('cfg/') == ['cfg/config.json']
  assert rundir.load_config(f'gs://{BUCKET}/cfg').to_dict() == json.loads(
      config.to_json_best_effort())


def test_a_run_that_goes_nonfinite_on_gs_uploads_its_events_and_trace_and_cleans_up(
    gcs_env, digits_data_dir, tmp_path, monkeypatch):
  # pylint: disable=import-outside-toplevel
  import tempfile
  from inception_jax import errors
  from inception_jax.data import pixels
  from inception_jax.training import loop
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # where the writer keeps its events
  # The 4th batch on is blank, which the step's normalization turns into NaN here: steps
  # 1 to 3 are logged (within the writer's 30 s between uploads, so only the first is
  # uploaded as it is written), then the loss is NaN.
  create = loop.pipeline.create_train_iterator
  normalize = pixels.normalize

  def blank_from_step_4(*args, **kwargs):
    for step, batch in enumerate(create(*args, **kwargs), 1):
      yield batch if step < 4 else {**batch, 'image': jnp.zeros_like(batch['image'])}

  def nan_if_blank(images, mean_rgb, std_rgb):
    return jnp.where(jnp.all(images == 0), jnp.nan, normalize(images, mean_rgb, std_rgb))

  monkeypatch.setattr(loop.pipeline, 'create_train_iterator', blank_from_step_4)
  monkeypatch.setattr(pixels, 'normalize', nan_if_blank)
  # The trace of steps 3 to 5 is still running when the run stops: it is uploaded too.
  config = tiny_config(digits_data_dir, num_train_steps=8, log_every_steps=1,
                       checkpoint_every_steps=100, eval_every_steps=100, profile_steps='3:5')
  with pytest.raises(errors.NonFiniteError, match='^step 4: loss is nan'):
    loop.train_and_evaluate(config, f'gs://{BUCKET}/nonfinite')
  records = [json.loads(line) for line in
             gcs_env.read('nonfinite/metrics.jsonl').decode().splitlines()]
  logged = {r['step'] for r in records if 'train_loss' in r}
  assert logged == {1, 2, 3}
  uploaded: set[int] = set()
  for name in gcs_env.objects('nonfinite/tensorboard/events.out.tfevents.'):
    uploaded.update(_event_tags_and_steps(gcs_env.read(name)).get('train_loss', []))
  assert uploaded == logged
  traces = [n for n in gcs_env.objects('nonfinite/tensorboard/plugins/profile/')
            if n.endswith('.xplane.pb')]
  assert len(traces) == 1, gcs_env.objects('nonfinite/')
  assert not list(tmp_path.glob('inception_jax_*'))  # the local copies are gone
