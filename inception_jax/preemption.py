"""Preemption: every process of a run stops at the same step, after saving it.

A Cloud TPU VM (or a scheduler) sends SIGTERM before taking a host away, and the
hosts of a pod slice get it at different moments. In a multi-process run, JAX's
preemption sync manager (started by `jax.distributed.initialize`, which installs
its own SIGTERM handler) makes every process learn of a notice sent to any of
them at one agreed step: `reached_preemption_sync_point(step)` is True there on
all processes. A single process has no such service; a Python SIGTERM handler
sets a flag instead.

A SIGTERM that arrives before `jax.distributed.initialize` would kill the process
(or be lost): `PreemptionWatch` installs its flag handler first and, once JAX's
handler has replaced it, hands an early signal on to JAX.
"""

import os
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Says, step by step, whether the run must save and stop (the same step on every process).

  Create it before `jax.distributed.initialize`; call `start(step)` once as soon as
  the run knows its starting step, then `reached(step)` after every step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous: Any = None
    # Where JAX's handler is already in place, a Python one would replace it.
    if (threading.current_thread() is threading.main_thread()
        and not jax.distributed.is_initialized()):
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())

  def _coordinated(self) -> bool:
    return jax.distributed.is_initialized()

  def start(self, step: int) -> bool:
    """Reports the starting step; True if a notice already asks to stop there."""
    if not self._coordinated():
      return self._flag.is_set()
    reached = multihost_utils.reached_preemption_sync_point(step)
    if self._flag.is_set():  # arrived before JAX's handler replaced ours: hand it on
      self._flag.clear()
      os.kill(os.getpid(), signal.SIGTERM)
    return reached

  def reached(self, step: int) -> bool:
    """True when the run must save `step` and stop; call it once per step, in order."""
    if not self._coordinated():
      return self._flag.is_set()
    return multihost_utils.reached_preemption_sync_point(step)

  def close(self) -> None:
    """Puts back the SIGTERM handler found at creation where JAX has not replaced it."""
    if self._previous is not None and not self._coordinated():
      signal.signal(signal.SIGTERM, self._previous)
