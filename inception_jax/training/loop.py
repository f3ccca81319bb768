"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in `workdir/checkpoints` (falling back past a
damaged one); otherwise starts fresh, or from `config.init_from` for
fine-tuning. Evaluates periodically over the whole held-out split, saves every
`checkpoint_every_steps` and at the end, and on SIGTERM (to any process) every
process saves the same step and the run stops (`preemption`). Only process 0
prints and writes logs; every process checkpoints. However the run ends, the
checkpoint manager and the metric writer are closed (a remote work directory gets
its last TensorBoard events).
"""

import concurrent.futures
import contextlib
import dataclasses
import time
from typing import Any, Iterator

from etils import epath
import jax
import ml_collections
import numpy as np

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax import host_memory
from inception_jax import paths
from inception_jax import sharding
from inception_jax.data import pipeline
from inception_jax.model import ops
from inception_jax.training import checkpointing
from inception_jax.training import distributed
from inception_jax.training import finetune
from inception_jax.training import metric_logging
from inception_jax.training import optim
from inception_jax.training import preemption
from inception_jax.training import profiling
from inception_jax.training import rundir
from inception_jax.training import steps


# What a resumed run must share with the checkpoints of its work directory.
RESUME_FIELDS = ('model', 'model_options', 'num_classes', 'image_size', 'dataset',
                 'class_names')


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint."""


def _stopped(step: int | None, manager: Any, is_main: bool, started: bool) -> None:
  """Raises Preempted for a run stopped by SIGTERM with its newest checkpoint at `step`."""
  if is_main:
    if started:
      print(f'SIGTERM: saved a checkpoint at step {step} in {manager.directory}; '
            'run the same command again to resume.', flush=True)
    else:
      print(f'SIGTERM before the first step: nothing new to save (newest checkpoint: '
            f'{step}); run the same command again to resume.', flush=True)
  raise Preempted(f'preempted at step {step}')


def evaluate(eval_step: Any, state: Any, batches: Iterator[dict[str, jax.Array]]
             ) -> dict[str, float]:
  """Top-1, top-5 and mean loss over every real example of `batches`."""
  totals: dict[str, float] = {}
  for batch in batches:
    counts = sharding.fetch(eval_step(state, batch))
    for key, value in counts.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  count = max(totals.get('count', 0.0), 1.0)
  return {'top1': totals['correct_top1'] / count, 'top5': totals['correct_top5'] / count,
          'loss': totals['loss_sum'] / count, 'count': totals['count']}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike,
                       watch: preemption.PreemptionWatch | None = None) -> dict[str, float]:
  """Trains and evaluates; returns the final evaluation metrics.

  `workdir` is a local folder or a URI orbax supports, such as gs://bucket/run
  (see `paths` for the environment gs:// needs). `watch`: the `PreemptionWatch`
  a program created at its start, to catch signals that come before this call;
  None creates one here.

  Raises Preempted after saving a checkpoint when SIGTERM arrives.
  """
  config_lib.validate(config)
  with contextlib.ExitStack() as closing:
    if watch is None:
      watch = closing.enter_context(contextlib.closing(preemption.PreemptionWatch()))
    # Whatever ends the run (its end, SIGTERM, a non-finite loss, any error), the
    # checkpoints finish and the writer uploads its last events.
    run = _set_up(config, paths.as_path(workdir), watch, closing)
    eval_result = _train(run, watch)
  if run.is_main:
    print(f'curves: {metric_logging.plot_curves(run.workdir)}', flush=True)
  return eval_result


@dataclasses.dataclass
class _Run:
  """A run ready to train: its data, state, compiled steps and where it writes."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  is_main: bool
  manager: Any  # orbax CheckpointManager
  writer: metric_logging.MetricWriter
  profiler: profiling.StepProfiler
  meta: dict[str, Any]
  mesh: Any
  steps_per_epoch: int
  total_steps: int
  start_step: int
  state: steps.TrainState
  train_step: Any
  eval_step: Any
  track_nonfinite: Any
  batches: Iterator[dict[str, jax.Array]]


def _set_up(config: ml_collections.ConfigDict, workdir: epath.Path,
            watch: preemption.PreemptionWatch, closing: contextlib.ExitStack) -> _Run:
  """Checks the run against its work directory, restores or initializes the state and
  compiles the training step; `closing` gets what must be closed when the run ends."""
  distributed.initialize(config)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  manager = checkpointing.create_manager(workdir / 'checkpoints', config.keep_checkpoints)
  closing.callback(manager.close)  # waits for a save in flight first
  if watch.start(manager.latest_step() or 0):
    _stopped(manager.latest_step(), manager, is_main, started=False)
  info = pipeline.get_dataset_info(config)
  meta = rundir.checkpoint_meta(config, info)
  resumed_fields = {k: meta[k] for k in RESUME_FIELDS}
  # Refused at start, before config.json is touched or anything compiles.
  checkpointing.check_newest_meta(manager, resumed_fields)
  pipeline.check_splits(config, info, (config.train_split, config.eval_split))
  mesh = sharding.create_mesh()
  model = rundir.build_model(config, info.num_classes)
  steps_per_epoch = info.split_sizes[config.train_split] // config.batch_size
  if steps_per_epoch < 1:
    raise errors.ConfigError(
        f'batch_size {config.batch_size} exceeds the {config.train_split} split '
        f'({info.split_sizes[config.train_split]} examples): lower it.')
  total_steps = optim.total_train_steps(config, steps_per_epoch)
  image_shape = (1, config.image_size, config.image_size, 3)
  trainable_mask = finetune.classifier_mask if config.freeze_backbone else None
  initialize, abstract_state = steps.train_state_initializer(
      config, model, image_shape, mesh, steps_per_epoch, trainable_mask)
  state_sharding = steps.shardings_of(abstract_state)

  def initial_state() -> steps.TrainState:
    restored = checkpointing.restore_latest(manager, abstract_state, resumed_fields)
    if restored is not None:
      return restored.state
    if config.init_from:
      return finetune.init_from_checkpoint(initialize(), config.init_from, config)
    return initialize()

  # The state is restored or initialized in a second thread while this one
  # compiles the training step for its abstract shapes: both mostly run in XLA.
  # A finished run (it only re-evaluates) leaves the step to compile on first use.
  train_step = steps.make_train_step(config, mesh, state_sharding)
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='initial_state') as pool:
    pending_state = pool.submit(initial_state)
    compile_s = None
    if (manager.latest_step() or 0) < total_steps:
      compile_start = time.time()
      train_step = train_step.lower(
          abstract_state, pipeline.train_batch_spec(config, mesh)).compile()
      compile_s = time.time() - compile_start
    state = pending_state.result()
  if is_main:  # the run's config, once it is known to fit the directory's checkpoints
    rundir.save_config(config, workdir)
  host_memory.release_free_memory()
  start_step = int(sharding.fetch(state.step))
  writer = closing.enter_context(contextlib.closing(
      metric_logging.MetricWriter(workdir, enabled=is_main)))
  profiler = closing.enter_context(contextlib.closing(
      profiling.StepProfiler(config_lib.profile_range(config), workdir)))
  if is_main:
    print(f'{config.model} on {info.name}: {total_steps} steps of {config.batch_size} '
          f'({steps_per_epoch} per epoch) on {jax.device_count()} {jax.default_backend()} '
          f'device(s), {ops.resolve(model.ops)} kernels, {np.dtype(model.dtype).name} compute; '
          f'work directory {workdir}'
          + (f'; resuming at step {start_step}' if start_step else ''), flush=True)
    if compile_s is not None:
      print(f'compiled the training step in {compile_s:.1f} s', flush=True)
      memory = profiling.memory_line(train_step)
      if memory:
        print(memory, flush=True)
  return _Run(config=config, workdir=workdir, is_main=is_main, manager=manager, writer=writer,
              profiler=profiler, meta=meta, mesh=mesh, steps_per_epoch=steps_per_epoch,
              total_steps=total_steps, start_step=start_step, state=state,
              train_step=train_step,
              eval_step=steps.make_eval_step(mesh, state_sharding, dtype=config.dtype),
              track_nonfinite=steps.make_nonfinite_tracker(mesh),
              batches=pipeline.create_train_iterator(config, mesh, start_step=start_step))


def _due(step: int, every: int, last: bool) -> bool:
  """Whether a periodic action (log, evaluation, save) runs after `step`."""
  return last or step % every == 0


def _train(run: _Run, watch: preemption.PreemptionWatch) -> dict[str, float]:
  """The training loop from `run.start_step`; returns the last evaluation's metrics."""
  config, is_main = run.config, run.is_main
  state = run.state
  nonfinite = None  # the first step with a non-finite loss or norm, tracked on the device

  def run_eval(step: int) -> dict[str, float]:
    result = evaluate(run.eval_step, state, pipeline.create_eval_iterator(config, run.mesh))
    run.writer.write(step, {f'eval_{k}': v for k, v in result.items()})
    if is_main:
      print(f"eval at step {step}: top1 {result['top1']:.4f} | top5 {result['top5']:.4f} | "
            f"loss {result['loss']:.4f} | {int(result['count'])} examples", flush=True)
    return result

  def save(step: int, eval_result: dict[str, float] | None = None) -> None:
    steps.check_finite(sharding.fetch(nonfinite))  # never checkpoint a non-finite state
    checkpointing.save(run.manager, step, state, run.meta,
                       eval_top1=None if eval_result is None else eval_result['top1'])

  distributed.wait_for_all_processes(f'ready_at_step_{run.start_step}',
                                     config.distributed_timeout_seconds)
  eval_result: dict[str, float] = {}
  timer = metric_logging.StepTimer(config.batch_size)
  for step in range(run.start_step + 1, run.total_steps + 1):
    run.profiler.before_step(step)
    state, metrics = run.train_step(state, timer.next_batch(run.batches))
    nonfinite = run.track_nonfinite(nonfinite, metrics, step)
    if step == run.start_step + 1:  # warm-up (first touches of memory): not in the throughput
      jax.block_until_ready(metrics)
      if is_main:
        print(f'first step took {timer.elapsed():.1f} s', flush=True)
      timer.restart()
    else:
      timer.count_step()
    last = step == run.total_steps
    if _due(step, config.log_every_steps, last):
      scalars = sharding.fetch(metrics)
      steps.check_finite(sharding.fetch(nonfinite))
      record = {f'train_{k}': float(v) for k, v in scalars.items()}
      record.update(timer.scalars())  # the steps since the last log line, warm-up left out
      run.writer.write(step, record)
      if is_main and timer.steps:
        print(metric_logging.progress_line(
            step, run.total_steps, run.steps_per_epoch, scalars, record['train_images_per_s'],
            record['train_data_wait_share'],
            (run.total_steps - step) * record['train_step_s']), flush=True)
      timer.restart()
    evaluated = _due(step, config.eval_every_steps, last)
    if evaluated:
      eval_result = run_eval(step)
    saved = evaluated or _due(step, config.checkpoint_every_steps, last)
    if saved:
      save(step, eval_result if evaluated else None)
      timer.restart()  # the throughput and step time count training steps only
    if run.profiler.after_step(step, metrics):
      timer.restart()  # nor the writing of the trace
    if watch.reached(step):
      if not saved:
        save(step)
      run.manager.wait_until_finished()  # saved before the line says so
      _stopped(step, run.manager, is_main, started=True)
  if run.start_step >= run.total_steps:
    eval_result = run_eval(run.start_step)
  return eval_result
