"""JAX's persistent compilation cache: a program compiled once loads in later processes."""

import jax

MIN_COMPILE_SECONDS = 0.5  # programs that compile faster are not worth a file


def use_persistent_cache(directory: str | None) -> None:
  """Keeps compiled programs in `directory` and loads them from there (None: stop).

  Call it before the process compiles anything: JAX opens the cache at the
  first compilation and keeps that directory for the life of the process.
  """
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
