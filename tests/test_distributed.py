"""When a run starts several processes: JAX's own cluster detection, flags, and the mode.

The environments are simulated with variables only; JAX's detection reads them
without any network access on a machine without a TPU.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import ml_collections
import pytest

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax.training import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLUSTER_VARIABLES = ('SLURM_', 'OMPI_', 'PMI_', 'TPU_', 'MEGASCALE_', 'KUBERNETES_',
                     'JAX_COORDINATOR')
SLURM_TWO_TASKS = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'localhost',
                   'SLURM_NTASKS': '2', 'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}


@pytest.fixture
def clean_env(monkeypatch):
  """No cluster variables from the machine running the tests."""
  for name in list(os.environ):
    if name.startswith(CLUSTER_VARIABLES):
      monkeypatch.delenv(name)
  return monkeypatch


def _config(**fields) -> ml_collections.ConfigDict:
  config = config_lib.get_base_config()
  config.update(fields)
  return config


def test_no_cluster_is_single_process(clean_env):
  assert distributed.detected_process_count() is None
  assert not distributed.is_multiprocess(_config())


@pytest.mark.parametrize('fields', [{'coordinator_address': '10.0.0.1:1234'},
                                    {'num_processes': 2}])
def test_explicit_fields_start_several_processes(clean_env, fields):
  assert distributed.is_multiprocess(_config(**fields))


def test_jax_coordinator_address_starts_several_processes(clean_env):
  clean_env.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  assert distributed.is_multiprocess(_config())


def test_slurm_job_step_with_two_tasks(clean_env):
  for name, value in SLURM_TWO_TASKS.items():
    clean_env.setenv(name, value)
  assert distributed.detected_process_count() == 2
  assert distributed.is_multiprocess(_config())


def test_slurm_job_step_with_one_task_keeps_one_process(clean_env):
  for name, value in {**SLURM_TWO_TASKS, 'SLURM_NTASKS': '1', 'SLURM_PROCID': '0'}.items():
    clean_env.setenv(name, value)
  assert distributed.detected_process_count() == 1
  assert not distributed.is_multiprocess(_config())


def test_slurm_allocation_outside_a_job_step_is_not_a_cluster(clean_env):
  # sbatch's shell has SLURM_NTASKS but no job step (no SLURM_STEP_NODELIST): JAX
  # starts no cluster there, and neither does this run.
  for name, value in SLURM_TWO_TASKS.items():
    if name != 'SLURM_STEP_NODELIST':
      clean_env.setenv(name, value)
  clean_env.setenv('SLURM_NODELIST', 'localhost')
  assert not distributed.is_multiprocess(_config())


def test_open_mpi_with_two_ranks(clean_env):
  clean_env.setenv('OMPI_MCA_orte_hnp_uri', '1531576320.0;tcp://127.0.0.1:34911')
  clean_env.setenv('OMPI_COMM_WORLD_SIZE', '2')
  clean_env.setenv('OMPI_COMM_WORLD_RANK', '0')
  clean_env.setenv('OMPI_COMM_WORLD_LOCAL_RANK', '0')
  assert distributed.is_multiprocess(_config())


def test_tpu_worker_variables_without_a_tpu_are_not_a_cluster(clean_env):
  clean_env.setenv('TPU_WORKER_HOSTNAMES', 'worker-0,worker-1')
  clean_env.setenv('TPU_WORKER_ID', '0')
  assert not distributed.is_multiprocess(_config())


def test_the_decision_is_jax_detection(clean_env):
  """A cluster type registered with JAX's detection (no variable of ours) is obeyed."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel

  class TwoProcessCluster(clusters.ClusterEnv):  # registers itself with JAX
    name = 'two_process_test_cluster'

    @classmethod
    def is_env_present(cls) -> bool:
      return os.environ.get('TWO_PROCESS_TEST_CLUSTER') == '1'

    @classmethod
    def get_coordinator_address(cls, timeout_secs, override_coordinator_port=None) -> str:
      return '127.0.0.1:1'

    @classmethod
    def get_process_count(cls) -> int:
      return 2

    @classmethod
    def get_process_id(cls) -> int:
      return 0

  try:
    assert not distributed.is_multiprocess(_config())
    clean_env.setenv('TWO_PROCESS_TEST_CLUSTER', '1')
    assert distributed.is_multiprocess(_config())
  finally:
    clusters.ClusterEnv._cluster_types.remove(TwoProcessCluster)  # pylint: disable=protected-access


def test_off_and_on_override_detection(clean_env):
  assert not distributed.is_multiprocess(_config(distributed='off', num_processes=2))
  assert distributed.is_multiprocess(_config(distributed='on'))
  with pytest.raises(errors.ConfigError, match="use 'auto', 'on' or 'off'"):
    distributed.is_multiprocess(_config(distributed='maybe'))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


_START = '''
import json, sys
from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax.training import distributed
config = config_lib.get_base_config()
config.distributed = sys.argv[1]
config.distributed_timeout_seconds = 60
try:
  distributed.initialize(config)
except errors.ConfigError as e:
  print(json.dumps({'error': str(e)})); sys.exit(0)
import jax
print(json.dumps({'process_count': jax.process_count(), 'process_index': jax.process_index()}))
'''


def _start(mode: str, env: dict[str, str]) -> subprocess.Popen:
  base = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARIABLES)}
  return subprocess.Popen(
      [sys.executable, '-c', _START, mode], cwd=ROOT, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      env={**base, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT), **env})


def _result(proc: subprocess.Popen) -> dict:
  try:
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 0, out[-2000:]
  return json.loads(out.strip().splitlines()[-1])


def test_two_slurm_tasks_join_one_run():
  """Two processes that see only SLURM's variables start one 2-process run."""
  port = str(_free_port())
  procs = [_start('auto', {**SLURM_TWO_TASKS, 'SLURM_PROCID': str(i),
                           'JAX_COORDINATOR_PORT': port}) for i in range(2)]
  results = [_result(p) for p in procs]
  assert results == [{'process_count': 2, 'process_index': 0},
                     {'process_count': 2, 'process_index': 1}]


def test_on_without_a_cluster_is_a_clear_error():
  result = _result(_start('on', {}))
  assert 'JAX found no cluster' in result['error']
  assert '--config.distributed=off' in result['error']


_BARRIERS = '''
import json, os, sys, time
from inception_jax import config as config_lib
from inception_jax.training import distributed
config = config_lib.get_base_config()
config.coordinator_address, config.num_processes = sys.argv[1], 2
config.process_id = int(sys.argv[2])
config.distributed_timeout_seconds = 60
distributed.initialize(config)
import jax
from orbax.checkpoint import multihost
jax.devices()  # both processes start their backends before one of them goes missing
if config.process_id == 1:
  time.sleep(60)
  sys.exit(0)
results = {}
for name, barrier in [('ours', lambda: distributed.wait_for_all_processes('never', 5)),
                      ('orbax', lambda: multihost.sync_global_processes('never_2', timeout=5))]:
  start = time.time()
  try:
    barrier()
    results[name] = 'passed'
  except Exception as e:  # the timeout
    results[name] = [type(e).__name__, str(e).splitlines()[0][:200], round(time.time() - start, 1)]
print(json.dumps(results), flush=True)
os._exit(0)  # jax.distributed's shutdown at exit would wait for the missing process 1
'''


@pytest.mark.slow
def test_a_missing_peer_times_out_every_barrier():
  """Process 1 never arrives: the start barrier and orbax's barriers raise after 5 s."""
  address = f'127.0.0.1:{_free_port()}'
  base = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARIABLES)}
  env = {**base, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  procs = [subprocess.Popen([sys.executable, '-c', _BARRIERS, address, str(i)], cwd=ROOT,
                            env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT) for i in range(2)]
  try:
    out, _ = procs[0].communicate(timeout=120)
  finally:
    for proc in procs:
      proc.kill()
      proc.wait()
  results = json.loads(out.strip().splitlines()[-1])
  for name in ('ours', 'orbax'):
    kind, message, seconds = results[name]
    assert 'DEADLINE_EXCEEDED' in message or 'timed out' in message.lower(), results
    assert 4 <= seconds < 20, results  # an untimed collective: gloo gives up after 30 s
