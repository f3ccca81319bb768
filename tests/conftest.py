"""Test session set-up and the fixtures every module shares.

torch (the peer library of the comparison tests) must be imported before TensorFlow:
imported after it, torch's triton import crashes the process (segmentation fault,
seen with torch 2.14.1 and tensorflow-cpu 2.21.0).
"""

import importlib.metadata
import importlib.util
import os
import pathlib

import pytest

# As `cli.main` does: gs:// through gcsfs. etils fixes its choice at the process's
# first path operation, so this comes before any test touches a path.
os.environ.setdefault('EPATH_USE_TF', 'false')

# The tests' programs are compiled once and run a few steps, so XLA's backend
# optimizations would cost far more compile time than they save. Every process of the session
# (subprocesses inherit it) compiles the same way, so bit-for-bit comparisons
# between them hold. Read when JAX starts its backend, after this module.
FAST_COMPILE_FLAGS = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
# An unknown flag here aborts every process, and jaxlib 0.12 no longer knows this one.
if tuple(int(part) for part in importlib.metadata.version('jaxlib').split('.')[:2]) < (0, 12):
  FAST_COMPILE_FLAGS += ' --xla_cpu_use_fusion_emitters=false'
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

if importlib.util.find_spec('torch') is not None:
  import torch  # noqa: F401  pylint: disable=unused-import
  import torchvision  # noqa: F401  pylint: disable=unused-import

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory) -> pathlib.Path:
  """A tfds data_dir holding the embedded sklearn_digits, prepared once per session.

  Subprocesses get it as `--config.data_dir`, so none of them prepares it again.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  from inception_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path_factory.mktemp('tfds')
  pipeline.get_dataset_info(ml_collections.ConfigDict(
      dict(dataset='sklearn_digits', data_dir=str(data_dir), manual_dir='',
           train_split='train', eval_split='test')))
  return data_dir


@pytest.fixture(scope='session', autouse=True)
def compilation_cache_dir(tmp_path_factory) -> pathlib.Path:
  """One persistent compilation cache for the session's processes (and xdist workers).

  A program compiled once (a tiny model's training step, say) loads from it in
  later tests and in subprocesses. Set before this process compiles anything, so
  in-process runs of `train` keep this directory rather than their work directory's.
  """
  from inception_jax import compilation_cache  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):  # one cache for all of pytest-xdist's workers
    root = root.parent
  directory = root / 'xla_cache'
  directory.mkdir(exist_ok=True)
  compilation_cache.use_persistent_cache(str(directory))
  return directory


@pytest.fixture(scope='session')
def subprocess_env(compilation_cache_dir) -> dict[str, str]:
  """The environment of the tests' Python subprocesses: this checkout, the shared cache.

  A command whose config names its own cache (`train` with compilation_cache=True)
  uses that one instead.
  """
  return {**os.environ, 'PYTHONUNBUFFERED': '1', 'PYTHONPATH': str(ROOT),
          'JAX_COMPILATION_CACHE_DIR': str(compilation_cache_dir),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5'}


# The files that run longest (pytest --durations), longest first.
LONGEST_FILES = ('test_preemption.py', 'test_transformations.py', 'test_finetune_chain.py',
                 'test_functional_docs.py', 'test_train.py', 'test_gcs_workdir.py',
                 'test_cli.py', 'test_benchmark.py', 'test_public_api.py',
                 'test_train_multidevice.py', 'test_accelerator_check_script.py',
                 'test_multihost.py')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """The longest files first, so that pytest-xdist's other workers run the rest beside them.

  After LONGEST_FILES come the other files with slow tests, then the rest; pytest-xdist
  (--dist loadfile) hands out files in this order.
  """
  def rank(item: pytest.Item) -> int:
    name = item.path.name
    if name in LONGEST_FILES:
      return LONGEST_FILES.index(name)
    return len(LONGEST_FILES) + (0 if item.get_closest_marker('slow') else 1)

  items.sort(key=rank)
