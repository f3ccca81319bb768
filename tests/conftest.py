"""Test session set-up.

torch (the peer library of the comparison tests) must be imported before TensorFlow:
imported after it, torch's triton import crashes the process (segmentation fault,
seen with torch 2.14.1 and tensorflow-cpu 2.21.0).
"""

import importlib.util
import os

# As `cli.main` does: gs:// through gcsfs. etils fixes its choice at the process's
# first path operation, so this comes before any test touches a path.
os.environ.setdefault('EPATH_USE_TF', 'false')

if importlib.util.find_spec('torch') is not None:
  import torch  # noqa: F401  pylint: disable=unused-import
  import torchvision  # noqa: F401  pylint: disable=unused-import
