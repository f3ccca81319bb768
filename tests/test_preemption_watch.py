"""`PreemptionWatch` in one process: a flood of SIGTERMs is one notice, never a crash."""

import signal
import subprocess
import sys
import time

# Busy for a few seconds while the notices arrive, then reports and exits as the
# command line does: `finish` first.
WATCHED = '''
import time
from inception_jax.training import preemption
watch = preemption.PreemptionWatch()
print('ready', flush=True)
end = time.monotonic() + 4
while time.monotonic() < end:
  pass
print('stop' if watch.reached(0) else 'no notice', flush=True)
watch.finish()
'''


def test_a_flood_of_sigterms_is_one_notice_and_the_process_exits_0(subprocess_env):
  # The handler runs between any two bytecodes of the main thread, itself included: a
  # notice arriving while the handler runs must not make it wait on itself.
  proc = subprocess.Popen([sys.executable, '-c', WATCHED], env=subprocess_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    assert proc.stdout.readline() == 'ready\n'
    sent, end = 0, time.monotonic() + 2
    while time.monotonic() < end:
      proc.send_signal(signal.SIGTERM)
      sent += 1
    output, _ = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert (proc.returncode, output) == (0, 'stop\n'), f'after {sent} SIGTERMs'
