"""Preemption: every process of a run stops at the same step, after saving it.

A Cloud TPU VM (or a scheduler) sends SIGTERM before taking a host away, and the
hosts of a pod slice get it at different moments. In a multi-process run, JAX's
preemption sync manager (started by `jax.distributed.initialize`, which installs
its own SIGTERM handler) makes every process learn of a notice sent to any of
them at one agreed step: `reached_preemption_sync_point(step)` is True there on
all processes. A single process has no such service; a Python SIGTERM handler
sets a flag instead.

A SIGTERM that arrives before `jax.distributed.initialize` would kill the process
and leave its peers waiting: `PreemptionWatch` installs its flag handler first
and, once JAX's handler has replaced it, hands an early signal on to JAX. This
module imports JAX only when asked, so that a program can create the watch
before JAX loads.
"""

import os
import signal
import sys
import threading
from typing import Any


def _distributed_started() -> bool:
  jax = sys.modules.get('jax')
  return jax is not None and jax.distributed.is_initialized()


def _reached_sync_point(step: int) -> bool:
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.reached_preemption_sync_point(step)


class PreemptionWatch:
  """Says, step by step, whether the run must save and stop (the same step on every process).

  Create it first thing, before `jax.distributed.initialize`; call `start(step)`
  once as soon as the run knows its starting step, then `reached(step)` after
  every step.
  """

  def __init__(self):
    self._notice = False
    self._previous: Any = None
    # Where JAX's handler is already in place, a Python one would replace it.
    if threading.current_thread() is threading.main_thread() and not _distributed_started():
      self._previous = signal.signal(signal.SIGTERM, self._note)

  def _note(self, *_: Any) -> None:
    # One assignment and no lock: the handler runs between any two bytecodes of the
    # main thread, its own included, so a notice arriving while it runs is harmless.
    self._notice = True

  def start(self, step: int) -> bool:
    """Reports the starting step; True if a notice already asks to stop there."""
    if not _distributed_started():
      return self._notice
    reached = _reached_sync_point(step)
    if self._notice:  # arrived before JAX's handler replaced ours: hand it on
      self._notice = False
      os.kill(os.getpid(), signal.SIGTERM)
    return reached

  def reached(self, step: int) -> bool:
    """True when the run must save `step` and stop; call it once per step, in order."""
    if not _distributed_started():
      return self._notice
    return _reached_sync_point(step)

  def finish(self) -> None:
    """The run is over (saved, or failed): SIGTERM is ignored until the process exits.

    For a program that exits next, such as the command line. While the interpreter
    shuts down, Python resets its own handler and JAX tears its down, so a notice in
    those moments would end a saved run by the signal instead of with exit status 0.
    """
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, signal.SIG_IGN)

  def close(self) -> None:
    """Puts back the SIGTERM handler found at creation where JAX has not replaced it."""
    if self._previous is not None and not _distributed_started():
      signal.signal(signal.SIGTERM, self._previous)
