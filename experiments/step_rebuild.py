"""What building the training step again in one process costs (a notebook cell run again).

  python -m experiments.step_rebuild [--persistent-cache]

`googlenet_bn_tiny` at 32 px, batch 8, compiled with `xla_options.FAST_COMPILE`: the
first build and step, the step built again for the same state, then the state and the
step built again. Prints each one's wall seconds, the XLA compiles over 0.3 s and the
trace + lowering seconds, from JAX's compile events. `--persistent-cache` turns on JAX's
persistent compilation cache in a temporary folder first.
"""

import argparse
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

from inception_jax import benchmark, compilation_cache, sharding, xla_options
from inception_jax.model import googlenet
from inception_jax.training import steps

CASE = benchmark.Case('googlenet_bn_tiny', 'train', 8, 32, 'float32')
_TRACE = ('/jax/core/compile/jaxpr_trace_duration',
          '/jax/core/compile/jaxpr_to_mlir_module_duration')
_COMPILE = '/jax/core/compile/backend_compile_duration'


def build_state() -> tuple[Any, Any, Any, Any]:
  """(config, mesh, state, state_sharding) built from scratch."""
  model = googlenet.create_model(CASE.model, dtype=CASE.dtype, ops='fast')
  config = benchmark._train_config(CASE)  # pylint: disable=protected-access
  mesh = sharding.create_mesh(jax.devices()[:1])
  shape = (1, CASE.size, CASE.size, 3)
  return (config, mesh, *steps.create_train_state(config, model, shape, mesh, 1000))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--persistent-cache', action='store_true')
  args = parser.parse_args()
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, seconds, **kwargs: events.append((name, seconds)))
  if args.persistent_cache:
    compilation_cache.use_persistent_cache(tempfile.mkdtemp())
  batch = {'image': jnp.zeros((CASE.batch, CASE.size, CASE.size, 3), jnp.uint8),
           'label': jnp.zeros((CASE.batch,), jnp.int32)}
  config, mesh, state, state_sharding = build_state()
  for label in ('first build and step', 'step built again', 'state and step built again'):
    if label == 'state and step built again':
      config, mesh, state, state_sharding = build_state()
    events.clear()
    start = time.perf_counter()
    step = steps.make_train_step(config, mesh, state_sharding, xla_options.FAST_COMPILE)
    state, metrics = step(state, batch)
    metrics['loss'].block_until_ready()
    compiles = [round(s, 2) for n, s in events if n == _COMPILE and s > 0.3]
    traced = sum(s for n, s in events if n in _TRACE)
    print(f'{label}: {time.perf_counter() - start:.1f} s, XLA compiles {compiles} s, '
          f'trace + lower {traced:.1f} s', flush=True)


if __name__ == '__main__':
  main()

