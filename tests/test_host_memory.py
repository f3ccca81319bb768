"""Tests of inception_jax.host_memory."""

import os
import subprocess
import sys

import pytest

from inception_jax import host_memory


def _resident_mb() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc_trim')
def test_freed_heap_memory_goes_back_to_the_os():
  # 3,000 blocks of 64 KiB come from the heap (below glibc's mmap threshold);
  # freeing all but every 10th leaves ~170 MB of holes that malloc keeps resident.
  blocks = [bytearray(64 * 1024) for _ in range(3000)]
  kept = blocks[::10]
  del blocks
  before = _resident_mb()
  host_memory.release_free_memory()
  after = _resident_mb()
  del kept  # the tenth of the blocks still in use, held until the measurement is taken
  assert before - after > 100, (before, after)


_HUGE = 'glibc.malloc.hugetlb=1'
_GLIBC = (2, 36)


@pytest.mark.parametrize('tunables, expected', [
    (None, _HUGE),
    ('', _HUGE),
    ('glibc.malloc.arena_max=2', 'glibc.malloc.arena_max=2:' + _HUGE),
])
def test_huge_pages_are_added_to_the_tunables(tunables, expected):
  env = {'PATH': '/bin'} if tunables is None else {'PATH': '/bin', 'GLIBC_TUNABLES': tunables}
  assert host_memory.environment_with_huge_pages(env, 'madvise', _GLIBC) == {
      'PATH': '/bin', 'GLIBC_TUNABLES': expected}


@pytest.mark.parametrize('tunables', ['glibc.malloc.hugetlb=0',
                                      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2'])
def test_a_hugetlb_value_the_user_set_wins(tunables):
  env = {'GLIBC_TUNABLES': tunables}
  assert host_memory.environment_with_huge_pages(env, 'madvise', _GLIBC) is None


@pytest.mark.parametrize('thp_mode, libc_version', [
    ('always', _GLIBC), ('never', _GLIBC), (None, _GLIBC),  # huge pages already, or none
    ('madvise', (2, 34)), ('madvise', None),  # a glibc without the tunable, or another libc
])
def test_nothing_changes_where_the_tunable_cannot_help(thp_mode, libc_version):
  assert host_memory.environment_with_huge_pages({}, thp_mode, libc_version) is None


def test_the_kernel_mode_is_the_bracketed_word(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert host_memory.transparent_huge_pages_mode(str(path)) == 'madvise'
  assert host_memory.transparent_huge_pages_mode(str(tmp_path / 'missing')) is None


_CAN_USE_HUGE_PAGES = (sys.platform.startswith('linux')
                       and host_memory.transparent_huge_pages_mode() == 'madvise'
                       and (host_memory.glibc_version() or (0, 0)) >= (2, 35))

# Restarts itself, then reports the tunables and the huge pages under a fresh 256 MiB block.
_PROBE = """
import os
from inception_jax import host_memory
host_memory.restart_with_huge_pages()
block = bytearray(b'\\1') * (256 * 2**20)
with open('/proc/self/smaps_rollup') as f:
  huge_kb = [int(line.split()[1]) for line in f if line.startswith('AnonHugePages')][0]
print(os.environ.get('GLIBC_TUNABLES'), huge_kb // 1024)
"""


def _environment_without_tunables() -> dict[str, str]:
  return {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}


def _probe(tunables: str | None) -> tuple[str, int]:
  env = _environment_without_tunables()
  if tunables is not None:
    env['GLIBC_TUNABLES'] = tunables
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True,
                       text=True, timeout=60, check=True).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not _CAN_USE_HUGE_PAGES, reason='needs Linux, THP madvise mode, glibc>=2.35')
def test_the_restarted_process_gets_huge_pages_for_large_blocks():
  tunables, huge_mib = _probe(None)
  assert tunables == _HUGE
  assert huge_mib >= 128, huge_mib  # most of the block (the kernel may be short of some)
  tunables, huge_mib = _probe('glibc.malloc.hugetlb=0')
  assert (tunables, huge_mib) == ('glibc.malloc.hugetlb=0', 0)


@pytest.mark.slow
@pytest.mark.skipif(not _CAN_USE_HUGE_PAGES, reason='needs Linux, THP madvise mode, glibc>=2.35')
def test_the_train_command_runs_with_huge_pages(tmp_path):
  config = tmp_path / 'report_tunables.py'
  config.write_text('import os\n\n\ndef get_config():\n'
                    "  raise SystemExit('tunables ' + os.environ.get('GLIBC_TUNABLES', ''))\n")
  run = subprocess.run([sys.executable, '-m', 'inception_jax', 'train', '--config', str(config)],
                       env=_environment_without_tunables(), capture_output=True, text=True,
                       timeout=120, check=False)
  assert f'tunables {_HUGE}' in run.stderr, run.stderr


@pytest.mark.parametrize('env, plugins, expected', [
    ({'JAX_PLATFORMS': 'cpu'}, {'libtpu'}, True),
    ({'JAX_PLATFORMS': 'cuda,cpu'}, set(), False),
    ({'JAX_PLATFORMS': 'tpu'}, set(), False),
    ({}, set(), True),
    ({}, {'libtpu'}, False),
    ({}, {'jax_cuda12_plugin'}, False),
])
def test_jax_runs_on_cpu(monkeypatch, env, plugins, expected):
  monkeypatch.setattr(host_memory.importlib.util, 'find_spec',
                      lambda name: object() if name in plugins else None)
  assert host_memory.jax_runs_on_cpu(env) is expected
