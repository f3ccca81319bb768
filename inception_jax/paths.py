"""Run paths: local folders or any URI orbax supports (gs:// above all), as `etils.epath.Path`.

Every path of a run (checkpoints, config.json, metrics, TensorBoard events,
curves, exported artifacts) goes through `as_path`, never through pathlib or
`open`: pathlib turns 'gs://bucket/run' into the local path 'gs:/bucket/run'.

epath reaches gs:// through TensorFlow's GCS client unless the environment
variable EPATH_USE_TF is 'false' when the process first touches a path, local or
remote (etils reads it once); then it goes through fsspec (gcsfs). The command line
sets it where gcsfs is installed (`cli.main`); programs calling the library
directly should set it first thing too. orbax writes its arrays through
tensorstore, which has its own GCS client.
"""

import os

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URI such as gs://bucket/run rather than a local path."""
  return '://' in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an epath.Path: made absolute when local, left as it is when a URI."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.fspath(path)))
