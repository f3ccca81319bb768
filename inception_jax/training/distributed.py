"""Multi-process start-up: `jax.distributed.initialize` when a run spans several processes.

`config.distributed` decides: 'off' never initializes; 'on' always does (JAX finds
the coordinator, process count and index from the cluster, or from the
`coordinator_address`/`num_processes`/`process_id` fields); 'auto' (the default)
initializes when those fields or `JAX_COORDINATOR_ADDRESS` are set, or when JAX's
own cluster detection finds a cluster of several processes: Cloud TPU VM pod
slices (through the GCE metadata server), GKE TPU jobs, SLURM job steps, Open MPI
(`mpirun`) and Kubernetes jobs. A cluster of one process is left uninitialized, so
that a single-task job keeps every local device.

A peer that never arrives makes `initialize` fail after
`config.distributed_timeout_seconds` on the others; a peer that dies later is
noticed by JAX's coordination service after its heartbeat timeout, which then
aborts the surviving processes (SIGABRT, exit status 134) rather than raising:
the job ends instead of hanging, and the next start resumes from the last
checkpoint.
"""

import os
from typing import Mapping

from absl import flags
import jax
import ml_collections
from orbax.checkpoint import multihost

from inception_jax import errors

MODES = ('auto', 'on', 'off')


def detected_process_count() -> int | None:
  """The process count JAX's cluster detection finds in this environment; None if none.

  JAX has no public call that detects a cluster without joining it, so this asks
  the detection `jax.distributed.initialize` itself runs (a private module) with a
  placeholder coordinator, which skips the coordinator look-up. Where that module
  differs (another JAX release), None: 'auto' then relies on explicit settings.
  """
  try:
    from jax._src import clusters  # pylint: disable=import-outside-toplevel
    _, count, _, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        'unused:0', None, None, [], None, None)
  except (ImportError, AttributeError, TypeError):
    return None
  return count


def is_multiprocess(config: ml_collections.ConfigDict,
                    environ: Mapping[str, str] = os.environ) -> bool:
  """Whether this run must call `jax.distributed.initialize` (see the module docstring)."""
  mode = config.distributed
  if mode not in MODES:
    raise errors.DistributedConfigError(
        f"config.distributed={mode!r}; use 'auto', 'on' or 'off'.")
  if mode != 'auto':
    return mode == 'on'
  if config.coordinator_address or config.num_processes > 1:
    return True
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  return (detected_process_count() or 1) > 1


def initialize(config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the run is multi-process; else nothing.

  Must run before anything asks JAX for its devices; a no-op where the caller has
  initialized `jax.distributed` already.
  """
  if jax.distributed.is_initialized() or not is_multiprocess(config):
    return
  try:
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address or None,
        num_processes=config.num_processes if config.num_processes > 0 else None,
        process_id=config.process_id if config.process_id >= 0 else None,
        initialization_timeout=config.distributed_timeout_seconds,
        heartbeat_timeout_seconds=config.distributed_timeout_seconds)
  except ValueError as e:
    raise errors.DistributedConfigError(
        f'config.distributed={config.distributed!r} but JAX found no cluster (a SLURM job '
        'step, mpirun, a Cloud TPU VM pod, a Kubernetes job) and not all of '
        'coordinator_address, num_processes and process_id are set '
        f'({e}). Set them, or run with --config.distributed=off.') from e
  _use_timed_barriers_in_orbax()


def _use_timed_barriers_in_orbax() -> None:
  """Makes orbax's barriers around each save the coordination service's, with a timeout.

  By default orbax meets the other processes in an untimed collective, where a
  process whose peer never comes waits forever; its distributed barrier raises
  after the timeout instead. orbax names the switch experimental; where a release
  lacks it, its default stays.
  """
  name = 'experimental_orbax_use_distributed_barrier'
  if name in flags.FLAGS:
    flags.FLAGS[name].parse('true')


def wait_for_all_processes(name: str, timeout_seconds: int) -> None:
  """Blocks until every process of the run has called this with `name` (a no-op alone).

  XLA's CPU collectives (gloo) give a peer 30 s to reach the first collective, not
  configurable: a process that compiles or restores much faster than the others
  would fail at its first step ("Gloo context initialization failed"). A barrier
  on the coordination service before the first step, with the run's own timeout,
  lets the others catch up. `name` must be new to the run. Naming every process
  makes orbax wait in the coordination service's barrier, whose timeout applies
  (without it, an untimed collective).
  """
  multihost.sync_global_processes(name, timeout=timeout_seconds,
                                  processes=set(range(jax.process_count())))
