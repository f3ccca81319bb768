"""JAX's persistent compilation cache: a program compiled once loads in later processes."""

import hashlib
import os
import pathlib
import warnings

import jax

from inception_jax import paths

MIN_COMPILE_SECONDS = 0.5  # programs that compile faster are not worth a file


def directory_for(workdir: paths.PathLike) -> str:
  """Where a run in `workdir` keeps its compiled programs.

  `<workdir>/xla_cache` for a local work directory. For a remote one
  (gs://bucket/run) a local folder named by a hash of it,
  `$XDG_CACHE_HOME/inception_jax/xla_cache/<hash>` (default ~/.cache).
  """
  if not paths.is_remote(workdir):
    return os.fspath(paths.as_path(workdir) / 'xla_cache')
  # Local, not in the bucket: JAX reads and writes cache entries synchronously while it
  # compiles, so a remote cache adds object-store round trips to every start-up, and a
  # resumed run usually lands on the same VM (the cache is only ever an optimization).
  digest = hashlib.sha256(os.fspath(workdir).rstrip('/').encode()).hexdigest()[:16]
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return os.fspath(pathlib.Path(base) / 'inception_jax' / 'xla_cache' / digest)


def use_persistent_cache(directory: str | None) -> None:
  """Keeps compiled programs in `directory` and loads them from there (None: stop).

  Call it before the process compiles anything: JAX opens the cache at the
  first compilation and keeps that directory for the life of the process.
  """
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  # XLA cannot serialize a program holding oneDNN calls (bfloat16 on CPUs with AVX-512,
  # `xla_options.CPU_BFLOAT16`) and JAX warns at each such compile; the program is
  # compiled afresh in each process instead, which is all the warning means.
  warnings.filterwarnings('ignore', category=UserWarning,
                          message='Error writing persistent compilation cache entry .*bad_alloc')
