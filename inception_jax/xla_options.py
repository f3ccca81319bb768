"""The XLA compile options this project passes, kept to those the running jaxlib knows.

An option that a jaxlib does not know fails the whole compile ("No such compile
option"), and options come and go between releases. `supported` tries each option
once per process on a one-line program and drops those the backend refuses, saying
so once in the log at INFO level (a user can do nothing about it): an upgrade then
falls back to XLA's defaults instead of failing.
"""

import functools
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp

# For programs that run once (the initializer) or where compile time matters more
# than speed (tests): XLA's backend optimizations multiply the initializer's compile
# time for no run-time gain, and on CPU the loop emitters compile its many small
# kernels faster than the fusion emitters.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True,
                'xla_cpu_use_fusion_emitters': False}

# For the model's programs on CPU: convolutions stay off the YNNPACK library, whose
# convolution weight gradients are slower than XLA's own kernels, while matrix
# products and reductions stay on it.
CPU_MODEL = {'xla_cpu_experimental_ynn_fusion_type':
             'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}

# Added to CPU_MODEL for programs that compute in bfloat16: XLA's own CPU convolutions
# compute bfloat16 in float32, while oneDNN's use the CPU's bfloat16 instructions
# (XLA hands oneDNN only what the CPU supports); in float32 oneDNN's are the slower.
CPU_BFLOAT16 = {'xla_cpu_experimental_onednn_custom_call': True}


def supported(options: Mapping[str, Any], platform: str | None = None) -> dict[str, Any]:
  """`options` less those that `platform`'s compiler (default: JAX's backend) refuses."""
  platform = platform or jax.default_backend()
  return {name: value for name, value in options.items()
          if _refusal(platform, name, value) is None}


def for_model(platform: str, dtype: Any = jnp.float32) -> dict[str, Any]:
  """The options for the model's training, evaluation and inference programs on `platform`,
  computing in `dtype` (the model's compute dtype)."""
  if platform != 'cpu':
    return {}
  bfloat16 = CPU_BFLOAT16 if jnp.dtype(dtype) == jnp.bfloat16 else {}
  return supported({**CPU_MODEL, **bfloat16}, platform)


def fast_compile(platform: str | None = None) -> dict[str, Any]:
  """`FAST_COMPILE` as far as `platform`'s compiler knows it."""
  return supported(FAST_COMPILE, platform)


@functools.lru_cache(maxsize=None)
def _refusal(platform: str, name: str, value: Any) -> str | None:
  """None if a trivial program compiles on `platform` with `name=value`, else the error.

  Cached, so a refusal is logged once per process however many programs compile.
  """
  device = jax.local_devices(backend=platform)[0]
  arg = jax.ShapeDtypeStruct((), jnp.float32,
                             sharding=jax.sharding.SingleDeviceSharding(device))
  lowered = jax.jit(lambda x: x + 1).lower(arg)
  try:
    lowered.compile(compiler_options={name: value})
  except Exception as e:  # pylint: disable=broad-except
    error = str(e).splitlines()[0] if str(e) else type(e).__name__
    logging.info('XLA option %s=%r left out: this jaxlib (%s) refuses it on %s (%s).',
                 name, value, jax.__version__, platform, error)
    return error
  return None
