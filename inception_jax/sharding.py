"""The device mesh, the two shardings of this project and the batch-size check.

One mesh axis, 'data': batches are split over it (`batch_sharding`) and the
train state is replicated (`replicated`), so every step is data parallel and XLA
inserts the cross-device reductions. No pmap, no axis names in the model.
"""

import math
from typing import Any, Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from inception_jax import errors

DATA_AXIS = 'data'

Batch = Mapping[str, jax.Array]


def create_mesh(devices: Any = None) -> Mesh:
  """A one-axis ('data') mesh over `devices` (default: all of them)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of arrays copied whole to every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of batches: the leading (example) axis split over 'data'."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh, field: str = 'batch_size') -> None:
  """Raises ValueError unless the global batch splits evenly over the mesh's devices."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise errors.ConfigError(
        f'config.{field}={batch_size} is not divisible by the {devices} devices; set '
        f'{field} to a multiple of {devices} (e.g. {math.ceil(batch_size / devices) * devices})'
        ' or run on a number of devices that divides it.')


def fetch(tree: Any) -> Any:
  """Host copies of replicated arrays, also where other processes hold replicas."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
