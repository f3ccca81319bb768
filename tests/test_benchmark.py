"""A smoke test of `python -m inception_jax benchmark` at a tiny size (no timings asserted)."""

import argparse
import json

import pytest

from inception_jax import benchmark


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser()
  benchmark.add_command(parser.add_subparsers())
  return parser.parse_args(['benchmark', *argv])


def test_benchmark_writes_markdown_and_json(tmp_path):
  args = _parse(['--models', 'googlenet_bn_tiny', '--cases', 'infer:2:32,train:2:32',
                 '--dtypes', 'float32', '--repeats', '2', '--fast-compile',
                 '--output', str(tmp_path / 'bench')])
  report = args.run(args)
  assert [(r['kind'], r['impl']) for r in report['results']] == [
      ('infer', 'jax xla'), ('infer', 'jax fast'), ('train', 'jax xla'), ('train', 'jax fast')]
  for row in report['results']:
    assert row['images_per_s'] > 0 and row['gflops'] > 0 and row['peak_rss_mb'] > 0
  assert json.loads((tmp_path / 'bench.json').read_text())['results'] == report['results']
  assert '| googlenet_bn_tiny train b2 32px float32 | jax fast |' in (
      tmp_path / 'bench.md').read_text()


def test_bad_case_says_how_to_write_one():
  with pytest.raises(ValueError, match='kind:batch:size'):
    benchmark.parse_cases('train:32', ['googlenet'], ['float32'])
