"""Trains googlenet_tiny a few steps on fixed global batches; run once per process.

  python tests/multihost_step_check.py OUT.npz PROCESS_ID NUM_PROCESSES [COORDINATOR]

With NUM_PROCESSES > 1 the processes meet through `jax.distributed` at
COORDINATOR; each feeds only its rows of every global batch
(`jax.make_array_from_process_local_data`). The global batches are a pure
function of the step, so any process layout sees the same data. Writes the
final parameters (this process's replica) and the per-step losses to OUT.npz.
"""

import sys

import jax
import numpy as np

from inception_jax import sharding as sharding_lib
from inception_jax.configs import default
from inception_jax.model import googlenet
from inception_jax.training import distributed
from inception_jax.training import steps

STEPS = 3
GLOBAL_BATCH = 8
IMAGE_SIZE = 32
NUM_CLASSES = 5


def global_batch(step: int) -> dict[str, np.ndarray]:
  """The step's whole batch, the same in every process layout."""
  rng = np.random.default_rng(step)
  return {'image': rng.integers(0, 256, (GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
          'label': rng.integers(0, NUM_CLASSES, size=GLOBAL_BATCH).astype(np.int32)}


def main(out: str, process_id: int, num_processes: int, coordinator: str = '') -> None:
  config = default.get_config()
  config.model = 'googlenet_tiny'
  config.model_options.width = None
  config.batch_size = GLOBAL_BATCH
  config.warmup_epochs = 0.0
  config.num_train_steps = STEPS
  config.coordinator_address = coordinator
  config.num_processes = num_processes
  config.process_id = process_id
  config.distributed_timeout_seconds = 60
  distributed.initialize(config)
  mesh = sharding_lib.create_mesh()
  model = googlenet.create_model(config.model, num_classes=NUM_CLASSES)
  state, state_sharding = steps.create_train_state(
      config, model, (1, IMAGE_SIZE, IMAGE_SIZE, 3), mesh, steps_per_epoch=10)
  step_fn = steps.make_train_step(config, mesh, state_sharding)
  rows = GLOBAL_BATCH // jax.process_count()
  local = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  losses = []
  for step in range(STEPS):
    batch = {k: jax.make_array_from_process_local_data(sharding_lib.batch_sharding(mesh), v[local])
             for k, v in global_batch(step).items()}
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics['loss'].addressable_data(0)))
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf.addressable_data(0))
          for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
  np.savez(out, losses=np.array(losses), devices=jax.device_count(), **flat)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
