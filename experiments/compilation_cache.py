"""One XLA compilation per distinct program across the many runs of an experiment."""

import contextlib
import tempfile
from typing import Iterator

from inception_jax import compilation_cache


@contextlib.contextmanager
def shared_compilation_cache() -> Iterator[str]:
  """JAX's persistent compilation cache in a temporary folder, for the `with` block.

  Runs that differ only in seeds or data compile identical programs: the first
  compiles (tens of seconds on two cores), the rest load the executable.
  """
  with tempfile.TemporaryDirectory() as cache:
    compilation_cache.use_persistent_cache(cache)
    try:
      yield cache
    finally:
      compilation_cache.use_persistent_cache(None)
