"""Where the start-up to the first training step goes, phase by phase, in this process.

  python -m experiments.startup_phases [--case train:32:224] [--model googlenet_bn]
      [--compiler-options '{"xla_llvm_disable_expensive_passes": true}'] [--steps 5]
      [--parts]

Run it in a fresh process per measurement (nothing compiled before, no persistent
cache): the imports, the state (its initializer traced, compiled and run), the training
step traced and lowered, its XLA compile, the first step and the ones after it, each in
wall seconds, CPU seconds (all threads; the kernel's share apart) and the seconds of it
XLA spent compiling.
`--compiler-options` are added to the model's defaults (`xla_options.for_model`).
`--parts` also compiles the step's two halves alone, with the same options: the loss's
gradient, and the optimizer's update with the step's global norms; with the step's
kernels (fused loops and library calls) per part, this says what the compile holds.
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
import optax

from inception_jax import benchmark, host_memory, sharding, xla_options
from inception_jax.model import googlenet
from inception_jax.training import optim, steps

_IMPORTED = time.perf_counter()


def cpu_seconds() -> tuple[float, float]:
  """(user + system, system) CPU seconds of this process so far, all threads.

  System time is mostly the kernel faulting memory in, huge pages included, which it
  may first have to assemble by compacting memory.
  """
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime, usage.ru_stime


def kernels(compiled: jax.stages.Compiled) -> int:
  """The fused kernels (loops and library calls) of a compiled CPU program."""
  return sum(' fusion(' in line for line in compiled.as_text().splitlines())


def parts(model: Any, state: steps.TrainState, batch: dict[str, jax.Array],
          aux_weight: float, options: dict[str, Any]) -> dict[str, Any]:
  """Compile seconds and kernels of the training step's two halves, each compiled alone."""

  def gradient(state: steps.TrainState, batch: dict[str, jax.Array]) -> Any:
    def loss(params: Any) -> tuple[jax.Array, Any]:
      variables = googlenet.model_variables(params, state.batch_stats)
      inputs = {'image': state.model_input(batch['image']), 'label': batch['label']}
      return steps.model_loss(model, variables, inputs, jax.random.key(0),
                              aux_weight=aux_weight)
    return jax.value_and_grad(loss, has_aux=True)(state.params)

  def update(state: steps.TrainState, grads: Any) -> Any:
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return params, opt_state, optim.global_norms(grads, params, updates)

  grads = jax.tree.map(jnp.ones_like, state.params)
  result = {}
  for name, fn, args in (('gradient', gradient, (state, batch)),
                         ('update_and_norms', update, (state, grads))):
    lowered = jax.jit(fn).lower(*args)
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    result[f'{name}_compile_s'] = time.perf_counter() - start
    result[f'{name}_kernels'] = kernels(compiled)
  return result


def phases(case: benchmark.Case, compiler_options: dict[str, Any], steps_after: int,
           with_parts: bool = False) -> dict[str, Any]:
  """Wall and CPU seconds of each start-up phase of `case`'s training step."""
  times: dict[str, Any] = {'imports_s': _IMPORTED - _LAUNCH}
  compiling = [0.0]  # XLA compile seconds so far, from JAX's compile events

  def listener(name: str, seconds: float, **kwargs: Any) -> None:
    del kwargs
    if name == '/jax/core/compile/backend_compile_duration':
      compiling[0] += seconds

  def timed(name: str, fn: Any) -> Any:
    wall, (cpu, system), xla = time.perf_counter(), cpu_seconds(), compiling[0]
    result = jax.block_until_ready(fn())
    times[f'{name}_s'] = time.perf_counter() - wall
    cpu_after, system_after = cpu_seconds()
    times[f'{name}_cpu_s'] = cpu_after - cpu
    times[f'{name}_system_s'] = system_after - system
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
  if with_parts:
    times.update(parts(model, state, batch, config.aux_weight,
                       xla_options.supported(options)))
  return dict(case=case.name, compiler_options=compiler_options, fusions=kernels(compiled),
              later_steps_s=later, **times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', default='train:32:224', help='train:BATCH:SIZE')
  parser.add_argument('--model', default='googlenet_bn')
  parser.add_argument('--compiler-options', default='{}', type=json.loads,
                      help='JSON object of XLA options added to the defaults')
  parser.add_argument('--steps', type=int, default=5, help='steps timed after the first')
  parser.add_argument('--parts', action='store_true',
                      help="also compile the step's gradient and its update alone")
  args = parser.parse_args()
  (case,) = benchmark.parse_cases(args.case, [args.model], ['float32'])
  if case.kind != 'train':
    parser.error(f'--case {args.case}: the start-up measured is a training step\'s; '
                 'write train:BATCH:SIZE.')
  print(json.dumps(phases(case, args.compiler_options, args.steps, args.parts)), flush=True)


if __name__ == '__main__':
  main()
