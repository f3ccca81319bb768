"""Test session set-up.

torch (the peer library of the comparison tests) must be imported before TensorFlow:
imported after it, torch's triton import crashes the process (segmentation fault,
seen with torch 2.14.1 and tensorflow-cpu 2.21.0).
"""

import importlib.util

if importlib.util.find_spec('torch') is not None:
  import torch  # noqa: F401  pylint: disable=unused-import
  import torchvision  # noqa: F401  pylint: disable=unused-import
