"""A smoke test of `python -m inception_jax benchmark` at a tiny size (no timings asserted).

Compiling is what these tests spend their time on. The command-line run keeps its
programs in a persistent compilation cache (`xla_cache`), from which the fresh-process
probe, which runs after it, loads the same case's instead of compiling them again.
"""

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from inception_jax import benchmark, cli, host_memory
from inception_jax import errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI_CASE = benchmark.Case('googlenet_bn', 'infer', 1, 64, 'float32')  # the probe's too


@pytest.fixture(scope='module')
def xla_cache(tmp_path_factory) -> dict[str, str]:
  """The environment that gives child processes this module's persistent compilation cache,
  every program kept however fast it compiled."""
  return {'JAX_COMPILATION_CACHE_DIR': str(tmp_path_factory.mktemp('xla_cache')),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}


@pytest.fixture
def probe_timeout(monkeypatch):
  """A time limit on `probe_in_fresh_process`'s child, which has none of its own."""
  monkeypatch.setattr(subprocess, 'run', functools.partial(subprocess.run, timeout=300))


def _parse(argv: list[str]) -> argparse.Namespace:
  return cli.build_parser().parse_args(['benchmark', *argv])


@pytest.mark.slow
def test_benchmark_writes_markdown_and_json(tmp_path, monkeypatch):
  # The matmul ceiling only scales 'fraction_of_ceiling'; at 4096² it takes seconds.
  monkeypatch.setattr(benchmark, 'MATMUL_SIZE', 256)
  args = _parse(['--models', 'googlenet_bn_shallow', '--cases', 'infer:2:32,train:2:32',
                 '--dtypes', 'float32', '--ops', 'fast', '--repeats', '2', '--fast-compile',
                 '--peak-tflops', 'float32=0.5', '--output', str(tmp_path / 'bench')])
  report = args.run(args)
  assert [(r['kind'], r['impl']) for r in report['results']] == [('infer', 'jax fast'),
                                                                  ('train', 'jax fast')]
  for row in report['results']:
    assert row['images_per_s'] > 0 and row['gflops'] > 0 and 'peak_rss_mb' not in row
    assert row['mfu'] == pytest.approx(row['gflops'] / 500)  # GFLOP/s over 0.5 TFLOP/s
  assert json.loads((tmp_path / 'bench.json').read_text())['results'] == report['results']
  markdown = (tmp_path / 'bench.md').read_text()
  assert '| googlenet_bn_shallow train b2 32px float32 | jax fast |' in markdown
  assert markdown.count('| - | - |') == 2  # start-up and memory only with --startup
  assert 'MFU against the peak given by --peak-tflops: float32 0.5 TFLOP/s.' in markdown


def test_input_pipeline_benchmark_times_both_streams_on_generated_photos(tmp_path):
  args = _parse(['--input-pipeline', '--num-images', '32', '--batch-size', '8',
                 '--image-size', '32', '--repeats', '1', '--output', str(tmp_path / 'input')])
  report = args.run(args)
  assert report['num_images'] == 32 and report['timed_batches'] == 2  # 4 batches, 2 warm-up
  assert set(report['images_per_s']) == {'ours train', 'ours eval', 'PIL per core'}
  assert report['train_images_per_s'] > 0 and report['eval_images_per_s'] > 0
  assert report['pil_bound_images_per_s'] > 0 and 'torchvision' not in report
  assert json.loads((tmp_path / 'input.json').read_text()) == report
  assert '| ours eval |' in (tmp_path / 'input.md').read_text()


def test_input_pipeline_benchmark_refuses_a_folder_too_small(tmp_path):
  args = _parse(['--input-pipeline', '--num-images', '8', '--batch-size', '8',
                 '--output', str(tmp_path / 'input')])
  with pytest.raises(errors.UserError, match='too few for 3 batches of 8'):
    args.run(args)


@pytest.mark.slow
def test_cli_compares_with_torchvision_in_one_process(tmp_path, xla_cache):
  """The command as users run it: torchvision and TensorFlow in one process, JAX/torch ratios."""
  pytest.importorskip('torchvision')
  done = subprocess.run(
      [sys.executable, '-m', 'inception_jax', 'benchmark', '--models', 'googlenet_bn',
       '--cases', f'infer:{CLI_CASE.batch}:{CLI_CASE.size}', '--dtypes', 'float32',
       '--ops', 'xla', '--compare', 'torchvision', '--torch-modes', 'eager', '--repeats', '1',
       '--warmup', '0', '--fast-compile', '--output', str(tmp_path / 'bench')],
      capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
      env={**os.environ, **xla_cache})
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((tmp_path / 'bench.json').read_text())
  assert [(r['jax'], r['torch']) for r in report['ratios']] == [('jax xla', 'torch eager')]
  assert report['ratios'][0]['ratio'] > 0
  # Like `train`, the command restarts itself with huge pages where the machine has them.
  env = host_memory.environment_with_huge_pages(
      os.environ, host_memory.transparent_huge_pages_mode(), host_memory.glibc_version())
  assert report['glibc_tunables'] == (env or os.environ).get('GLIBC_TUNABLES', '')


def test_each_timed_run_follows_a_lead_in_run_of_its_own_and_rounds_rotate():
  calls = []

  def runner(name: str) -> benchmark.Runner:
    return benchmark.Runner(name, lambda: calls.append(name), compile_s=0.0)

  runners = [runner('a'), runner('b')]
  benchmark.time_interleaved(runners, repeats=2, warmup=1, lead_in=1)
  # Warm-up a, b; round 0: a a, b b; round 1 (rotated): b b, a a.
  assert ''.join(calls) == 'ab' + 'aabb' + 'bbaa'
  assert [len(r.times) for r in runners] == [2, 2]
  calls.clear()
  benchmark.time_interleaved(runners, repeats=1, warmup=0, lead_in=0)
  assert ''.join(calls) == 'ab'


@pytest.mark.slow
def test_fresh_process_probe_reports_startup_and_peak_memory(xla_cache, monkeypatch,
                                                             probe_timeout):
  # The child loads its programs where the command-line test compiled them, if it ran.
  for name, value in xla_cache.items():
    monkeypatch.setenv(name, value)
  ballast = np.ones(2 * 2**30 // 8)  # 2 GiB resident here, none of it in the child
  assert benchmark.peak_rss_mb() > 2048
  start = time.time()
  probe = benchmark.probe_in_fresh_process(CLI_CASE, 'jax xla', fast_compile=True)
  del ballast
  assert 0 < probe['startup_s'] < time.time() - start
  # the child imported jax and ran a step: far more than an idle interpreter's
  # ~10 MB, and its own peak (~0.6 GB), not this process's
  assert 100 < probe['peak_rss_mb'] < 2048


def test_fresh_process_failure_shows_the_childs_error(probe_timeout):
  case = benchmark.Case('no_such_model', 'train', 2, 32, 'float32')
  with pytest.raises(RuntimeError, match='unknown model'):
    benchmark.probe_in_fresh_process(case, 'jax fast', fast_compile=True)


def test_peaks_are_read_per_dtype():
  assert benchmark.parse_peaks('bfloat16=989,float32=494.7') == {'bfloat16': 989.0,
                                                                 'float32': 494.7}
  assert benchmark.parse_peaks(None) == {}
  for bad in ['bf16=989', 'float32', 'float32=fast', 'float32=0', 'float32=-5']:
    with pytest.raises(errors.UserError, match='dtype=TFLOPS'):
      benchmark.parse_peaks(bad)


def test_torch_runs_on_the_device_jax_uses():
  assert benchmark.torch_device('cpu', cuda_available=True) == 'cpu'
  assert benchmark.torch_device('gpu', cuda_available=True) == 'cuda'
  for platform, cuda in [('gpu', False), ('tpu', False), ('tpu', True)]:
    with pytest.raises(errors.UserError,
                       match=rf'runs torch on the device JAX uses \({platform}\)'):
      benchmark.torch_device(platform, cuda)


def test_comparison_without_torchvision_names_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torchvision', None)  # an import of it raises ImportError
  with pytest.raises(errors.UserError,
                     match=r'--compare torchvision needs torch and torchvision .*install them '
                     r'with: pip install -r requirements-test.txt'):
    benchmark._import_torch()  # pylint: disable=protected-access


def test_comparison_beside_a_device_torch_cannot_use_stops_before_compiling(monkeypatch,
                                                                            tmp_path):
  pytest.importorskip('torch')  # without torch the command stops earlier, naming what to install
  monkeypatch.setattr(benchmark.jax, 'default_backend', lambda: 'tpu')
  monkeypatch.setattr(benchmark, 'make_runner', lambda *a: pytest.fail('compiled a runner'))
  argv = ['benchmark', '--models', 'googlenet_bn_tiny', '--cases', 'infer:2:32', '--dtypes',
          'float32', '--compare', 'torchvision', '--output', str(tmp_path / 'bench')]
  with pytest.raises(SystemExit,
                     match=r'^error: --compare torchvision runs torch on the device JAX uses '
                     r'\(tpu\)'):
    cli.main(argv)


def test_bad_case_says_how_to_write_one():
  with pytest.raises(errors.UserError, match='kind:batch:size'):
    benchmark.parse_cases('train:32', ['googlenet'], ['float32'])


@pytest.mark.parametrize('options, expected', [
    (['--cases', 'bogus:1:2'], "error: bad case 'bogus:1:2': write kind:batch:size"),
    (['--ops', 'bogus'], "error: unknown ops 'bogus': use 'auto'"),
    (['--peak-tflops', 'float32=fast'], "error: bad --peak-tflops entry 'float32=fast'"),
    (['--compare', 'torchvision', '--torch-modes', 'jit'], "error: unknown --torch-modes"),
])
def test_bad_options_end_in_one_error_line(options, expected, monkeypatch, tmp_path):
  monkeypatch.setattr(benchmark, 'make_runner', lambda *a: pytest.fail('compiled a runner'))
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['benchmark', '--models', 'googlenet_bn_tiny', '--cases', 'infer:2:32',
              '--output', str(tmp_path / 'bench'), *options])
  assert str(exit_info.value.code).startswith(expected), exit_info.value.code
  assert '\n' not in exit_info.value.code
