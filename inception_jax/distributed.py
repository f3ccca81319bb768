"""Multi-process start-up: `jax.distributed.initialize` when a run spans several processes.

A single-process run never initializes it. A multi-process run is recognized from
the config (`coordinator_address`, `num_processes`, `process_id`) or from the
cluster's environment: Cloud TPU VM slices with several workers, SLURM jobs with
several tasks, or JAX's own `JAX_COORDINATOR_ADDRESS`. On those clusters JAX
detects the coordinator, process count and index itself.

A peer that never arrives makes `initialize` fail after
`config.distributed_timeout_seconds` on the others; a peer that dies later is
noticed by JAX's coordination service after its heartbeat timeout, which then
aborts the surviving processes (SIGABRT, exit status 134) rather than raising:
the job ends instead of hanging, and the next start resumes from the last
checkpoint.
"""

import os
from typing import Mapping

import jax
import ml_collections
from orbax.checkpoint import multihost


def is_multiprocess(config: ml_collections.ConfigDict,
                    environ: Mapping[str, str] = os.environ) -> bool:
  """Whether this run spans several processes and needs `jax.distributed`."""
  if config.coordinator_address or config.num_processes > 1:
    return True
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if int(environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  return len([h for h in environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


def initialize(config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the run is multi-process; else nothing.

  Must run before anything asks JAX for its devices.
  """
  if not is_multiprocess(config):
    return
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address or None,
      num_processes=config.num_processes if config.num_processes > 0 else None,
      process_id=config.process_id if config.process_id >= 0 else None,
      initialization_timeout=config.distributed_timeout_seconds,
      heartbeat_timeout_seconds=config.distributed_timeout_seconds)


def wait_for_all_processes(name: str, timeout_seconds: int) -> None:
  """Blocks until every process of the run has called this with `name` (a no-op alone).

  XLA's CPU collectives (gloo) give a peer 30 s to reach the first collective, not
  configurable: a process that compiles or restores much faster than the others
  would fail at its first step ("Gloo context initialization failed"). A barrier
  on the coordination service before the first step, with the run's own timeout,
  lets the others catch up. `name` must be new to the run.
  """
  multihost.sync_global_processes(name, timeout=timeout_seconds)
