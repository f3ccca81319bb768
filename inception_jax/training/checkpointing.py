"""Orbax checkpoints of the whole train state, with a small JSON record of what made them.

Each step directory holds two items: ``state`` (the train state pytree, saved
asynchronously by every process) and ``meta`` (model name, classes, image size,
data set). Kept: the newest `keep` checkpoints plus the best one by evaluation
top-1. A damaged newest checkpoint is reported and the previous good one used.
Directories are local paths or URIs orbax supports, such as gs://bucket/run
(`paths.as_path`).
"""

import contextlib
import dataclasses
import logging as std_logging
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from inception_jax import errors
from inception_jax import paths

BEST_METRIC = 'eval_top1'


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `restore_latest` found: the state, its step and its metadata."""
  state: Any
  step: int
  meta: dict[str, Any]


class _Manager(ocp.CheckpointManager):
  """orbax's manager, leaving JAX's preemption sync point to the training loop.

  JAX agrees on the preemption step from the last step each process reported.
  orbax's manager reports steps too, also from its background thread after a
  save, which can move that point behind the loop's step so that it is never
  reached. The loop reports every step itself (`preemption.PreemptionWatch`).
  """

  def reached_preemption(self, step: int) -> bool:
    return False


def create_manager(directory: paths.PathLike, keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A manager keeping the newest `keep` checkpoints plus the best by eval top-1."""
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  # A read-only manager is given the settings orbax would otherwise change with a warning.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, read_only=read_only, enable_async_checkpointing=not read_only,
      **(dict(save_interval_steps=0, create=False) if read_only else {}))
  with _without_read_only_notice():
    return _Manager(paths.as_path(directory), options=options,
                    item_handlers={'state': ocp.StandardCheckpointHandler(),
                                   'meta': ocp.JsonCheckpointHandler()})


class _ReadOnlyNotice(std_logging.Filter):
  """Drops orbax's warning that a read-only manager's directory is read-only."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')


@contextlib.contextmanager
def _without_read_only_notice() -> Iterator[None]:
  """While a manager is created: evaluate and predict print our lines only."""
  absl_logger = logging.get_absl_logger()
  notice = _ReadOnlyNotice()
  absl_logger.addFilter(notice)
  try:
    yield
  finally:
    absl_logger.removeFilter(notice)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any],
         eval_top1: float | None = None) -> None:
  """Starts an asynchronous save of `state` at `step` (every process must call it)."""
  metrics = None if eval_top1 is None else {BEST_METRIC: float(eval_top1)}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=metrics, force=True)


def check_meta(meta: dict[str, Any], expected: dict[str, Any], where: str) -> None:
  """Raises CheckpointMismatchError if `meta` disagrees with `expected` on any key."""
  wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
  if wrong:
    details = '; '.join(f'{k}: checkpoint has {got!r}, config asks for {want!r}'
                        for k, (got, want) in wrong.items())
    raise errors.CheckpointMismatchError(
        f'the checkpoint in {where} was written for another model or data set ({details}). '
        'Use another work directory, or --config.init_from to fine-tune from it.')


def check_newest_meta(manager: ocp.CheckpointManager, expected: dict[str, Any]) -> None:
  """Refuses a run whose config disagrees with the record of the newest checkpoint.

  Reads only the small JSON record, so a run is refused before it compiles or
  writes anything. A record that cannot be read is left to `restore_latest`.
  """
  step = manager.latest_step()
  if step is None:
    return
  try:
    meta = _read_meta(manager, step)
  except Exception:  # pylint: disable=broad-except
    return
  check_meta(meta, expected, str(manager.directory))


def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON record saved with `step` (raises if it cannot be read)."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   expected_meta: dict[str, Any]) -> Restored | None:
  """Restores the newest readable checkpoint; None if the directory has none.

  A checkpoint that cannot be read is reported and the next older one tried;
  if checkpoints exist but none can be read, raises rather than start over.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures, damaged = [], []
  for step in steps:
    try:
      meta = _read_meta(manager, step)
      check_meta(meta, expected_meta, str(manager.directory))
      state = manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))['state']
    except errors.CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'step {step}: {type(e).__name__}: {e}')
      damaged.append(step)
      logging.warning('checkpoint at step %d is damaged (%s); trying the previous one.',
                      step, e)
      continue
    _move_aside(manager, damaged)
    return Restored(state=state, step=step, meta=meta)
  if steps:
    raise errors.NoCheckpointError(f'no checkpoint in {manager.directory} could be restored:\n  '
                       + '\n  '.join(failures)
                       + '\nMove the directory aside to start over.')
  return None


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames damaged step folders to `<step>.damaged`, so training can save those steps again."""
  if steps and jax.process_index() == 0:
    for step in steps:
      folder = epath.Path(manager.directory) / str(step)
      target = folder.with_name(f'{step}.damaged')
      folder.rename(target)
      logging.warning('moved the damaged checkpoint %s aside to %s.', folder, target)
  if steps:
    manager.reload()


def find_checkpoint(path: paths.PathLike) -> tuple[epath.Path, int | None]:
  """Resolves a work directory, its checkpoints/ folder or one step folder.

  Returns (checkpoint root, step or None for the newest).
  """
  path = paths.as_path(path)
  if (path / 'checkpoints').is_dir():
    return path / 'checkpoints', None
  if (path / 'state').is_dir() and path.name.isdigit():
    return path.parent, int(path.name)
  if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
    return path, None
  raise errors.NoCheckpointError(
      f'{path} holds no checkpoint: give a work directory, its checkpoints/ '
      'folder, or one step folder inside it.')


def load_raw(path: paths.PathLike) -> Restored:
  """Reads a checkpoint without a target structure, onto this process's first device.

  For fine-tuning and evaluation, where the saved tree need not match the
  current model, and the checkpoint may come from another topology (a pod's
  processes and devices). `path` as for `find_checkpoint`.
  """
  root, step = find_checkpoint(path)
  manager = create_manager(root, read_only=True)
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise errors.NoCheckpointError(f'{root} holds no checkpoint steps.')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
      manager.item_metadata(step)['state'])
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  manager.close()
  return Restored(state=restored['state'], step=step, meta=restored['meta'])
