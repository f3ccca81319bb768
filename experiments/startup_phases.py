"""Where the start-up to the first training step goes, phase by phase, in this process.

  python -m experiments.startup_phases [--case train:32:224] [--model googlenet_bn]
      [--compiler-options '{"xla_llvm_disable_expensive_passes": true}'] [--steps 5]

Run it in a fresh process per measurement (nothing compiled before, no persistent
cache): the imports, the state (its initializer traced, compiled and run), the training
step traced and lowered, its XLA compile, the first step and the ones after it, each in
wall seconds, CPU seconds (all threads) and the seconds of it XLA spent compiling.
`--compiler-options` are added to the model's defaults (`xla_options.for_model`).
Prints one JSON line.
"""

import time

_LAUNCH = time.perf_counter()

# pylint: disable=wrong-import-position
import argparse
import json
import resource
from typing import Any

import jax
import jax.numpy as jnp

from inception_jax import benchmark, host_memory, sharding, xla_options
from inception_jax.model import googlenet
from inception_jax.training import steps

_IMPORTED = time.perf_counter()


def cpu_seconds() -> float:
  """User and system CPU seconds of this process so far, all threads."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def phases(case: benchmark.Case, compiler_options: dict[str, Any], steps_after: int
           ) -> dict[str, Any]:
  """Wall and CPU seconds of each start-up phase of `case`'s training step."""
  times: dict[str, Any] = {'imports_s': _IMPORTED - _LAUNCH}
  compiling = [0.0]  # XLA compile seconds so far, from JAX's compile events

  def listener(name: str, seconds: float, **kwargs: Any) -> None:
    del kwargs
    if name == '/jax/core/compile/backend_compile_duration':
      compiling[0] += seconds

  def timed(name: str, fn: Any) -> Any:
    wall, cpu, xla = time.perf_counter(), cpu_seconds(), compiling[0]
    result = jax.block_until_ready(fn())
    times[f'{name}_s'] = time.perf_counter() - wall
    times[f'{name}_cpu_s'] = cpu_seconds() - cpu
    times[f'{name}_xla_compile_s'] = compiling[0] - xla
    return result

  jax.monitoring.register_event_duration_secs_listener(listener)

  model = googlenet.create_model(case.model, dtype=case.dtype, ops='fast')
  config = benchmark._train_config(case)  # pylint: disable=protected-access
  mesh = sharding.create_mesh(jax.devices()[:1])
  shape = (case.batch, case.size, case.size, 3)
  state, state_sharding = timed('state', lambda: steps.create_train_state(
      config, model, (1, *shape[1:]), mesh, 1000))
  pixels = jax.random.randint(jax.random.key(1), shape, 0, 256).astype(jnp.uint8)
  batch = {'image': pixels, 'label': jnp.arange(case.batch, dtype=jnp.int32) % 1000}
  options = {**xla_options.for_model(jax.default_backend(), case.dtype), **compiler_options}
  step = steps.make_train_step(config, mesh, state_sharding, options)
  lowered = timed('trace_and_lower', lambda: step.lower(state, batch))
  compiled = timed('compile', lowered.compile)
  host_memory.release_free_memory()
  state, _ = timed('first_step', lambda: compiled(state, batch))
  times['launch_to_first_step_s'] = time.perf_counter() - _LAUNCH
  later = []
  for _ in range(steps_after):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    metrics['loss'].block_until_ready()
    later.append(time.perf_counter() - start)
  jax.monitoring.unregister_event_duration_listener(listener)
  hlo = compiled.as_text()
  return dict(case=case.name, compiler_options=compiler_options,
              fusions=sum(' fusion(' in line for line in hlo.splitlines()),
              later_steps_s=later, **times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', default='train:32:224', help='train:BATCH:SIZE')
  parser.add_argument('--model', default='googlenet_bn')
  parser.add_argument('--compiler-options', default='{}', type=json.loads,
                      help='JSON object of XLA options added to the defaults')
  parser.add_argument('--steps', type=int, default=5, help='steps timed after the first')
  args = parser.parse_args()
  (case,) = benchmark.parse_cases(args.case, [args.model], ['float32'])
  if case.kind != 'train':
    parser.error(f'--case {args.case}: the start-up measured is a training step\'s; '
                 'write train:BATCH:SIZE.')
  print(json.dumps(phases(case, args.compiler_options, args.steps)), flush=True)


if __name__ == '__main__':
  main()
