"""Tests of inception_jax.host_memory."""

import os
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
