"""One XLA compilation per distinct program across the many runs of an experiment."""

import contextlib
import tempfile
from typing import Iterator

import jax


@contextlib.contextmanager
def shared_compilation_cache() -> Iterator[str]:
  """JAX's persistent compilation cache in a temporary folder, for the `with` block.

  Runs that differ only in seeds or data compile identical programs: the first
  compiles (tens of seconds on two cores), the rest load the executable.
  """
  with tempfile.TemporaryDirectory() as cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    try:
      yield cache
    finally:
      jax.config.update('jax_compilation_cache_dir', None)
