"""The process's memory from the operating system: huge pages and handing freed memory back."""

import ctypes
import ctypes.util
import importlib.util
import os
import sys
from typing import Mapping

HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_ENABLED = '/sys/kernel/mm/transparent_hugepage/enabled'


def transparent_huge_pages_mode(path: str = _THP_ENABLED) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'); None without one."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  chosen = [word[1:-1] for word in text.split() if word.startswith('[')]
  return chosen[0] if chosen else None


def glibc_version() -> tuple[int, int] | None:
  """The C library's version where it is glibc, e.g. (2, 36); None elsewhere."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  major, minor = version.split('.')[:2]
  return (int(major), int(minor)) if name == 'glibc' else None


def environment_with_huge_pages(
    env: Mapping[str, str], thp_mode: str | None,
    libc_version: tuple[int, int] | None) -> dict[str, str] | None:
  """`env` with glibc's malloc asked to back its blocks with huge pages; None if unchanged.

  XLA's CPU runtime allocates the training step's large temporary buffer afresh
  each step; glibc maps it with mmap and the kernel faults it in 4 KiB at a time,
  which costs a noticeable share of the step. With the tunable (glibc >= 2.35)
  malloc madvises its mappings for transparent huge pages, which need far fewer
  faults (measurements: experiments/results/cpu_tuning.md). It only matters in the
  kernel's 'madvise' mode ('always' already gives huge pages, 'never' refuses
  them). A `glibc.malloc.hugetlb` value already in GLIBC_TUNABLES wins (set it
  to 0 to opt out).
  """
  if thp_mode != 'madvise' or libc_version is None or libc_version < (2, 35):
    return None
  tunables = env.get('GLIBC_TUNABLES', '')
  if any(t.split('=')[0] == 'glibc.malloc.hugetlb' for t in tunables.split(':')):
    return None
  return {**env, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, HUGE_PAGES_TUNABLE]))}


ACCELERATOR_PLUGINS = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                       'jax_rocm7_plugin')


def jax_runs_on_cpu(env: Mapping[str, str] = os.environ) -> bool:
  """Whether JAX will compute on the CPU, told before JAX is imported.

  `JAX_PLATFORMS` decides when set; otherwise an installed accelerator plugin
  (libtpu, the CUDA or ROCm plugins) means JAX will pick that accelerator.
  """
  platforms = env.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0] == 'cpu'
  return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def restart_with_huge_pages() -> None:
  """Re-executes this process's command line with `environment_with_huge_pages`, if it changes.

  glibc reads its tunables only at start-up, so a running process cannot turn
  them on: call this first thing in a program's main, before any work. Returns
  (and changes nothing) where the environment already has the tunable, the kernel
  or C library cannot use it, or the platform is not Linux.
  """
  if not sys.platform.startswith('linux') or not sys.executable:
    return
  env = environment_with_huge_pages(os.environ, transparent_huge_pages_mode(), glibc_version())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def release_free_memory() -> None:
  """Returns the memory malloc holds free to the operating system (glibc's `malloc_trim`).

  Compiling the training step frees memory that glibc keeps in its arenas; kept,
  it stays resident under the step's own buffers for the whole run. Call it after
  compiling. A no-op where the C library has no
  `malloc_trim` (macOS, musl).
  """
  name = ctypes.util.find_library('c')
  libc = ctypes.CDLL(name) if name else None
  if libc is not None and hasattr(libc, 'malloc_trim'):
    libc.malloc_trim(0)
