"""Helpers shared by the test modules (import as `from helpers import ...`)."""

import math
import pathlib
import struct
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import cli
from inception_jax.data import pipeline
from inception_jax.serving import convert
from inception_jax.training import rundir


def random_variables(model, image_size: int, seed: int = 0):
  """He-scaled random weights and BN statistics for `model`, without compiling its init."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(0, math.sqrt(2 / math.prod(leaf.shape[:-1])), leaf.shape)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0, 0.1, leaf.shape)

  return jax.tree.map(np.float32, jax.tree_util.tree_map_with_path(draw, shapes))


def make_run(directory, config, seed: int = 0):
  """A run directory as training leaves it (config.json, a checkpoint) with random weights."""
  info = pipeline.get_dataset_info(config)
  model = rundir.build_model(config, info.num_classes)
  convert.write_run(directory, config, random_variables(model, config.image_size, seed),
                    info.class_names)
  return pathlib.Path(directory)


def convert_cli(*argv: str) -> None:
  """`python -m inception_jax convert ...`, in this process."""
  args = cli.build_parser().parse_args(['convert', *argv])
  args.run(args)


def write_png_bomb(path, side: int = 20000, rows_per_piece: int = 100) -> str:
  """A valid `side` x `side` grayscale PNG of zeros in a few hundred KB: a decompression bomb.

  Its zlib stream repeats one deflate piece (100 zero rows, ended by a full flush, so it
  is self-contained) instead of compressing side² bytes.
  """
  assert side % rows_per_piece == 0
  compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate
  piece = (compressor.compress(bytes((side + 1) * rows_per_piece))
           + compressor.flush(zlib.Z_FULL_FLUSH))
  adler32 = ((side + 1) * side % 65521) << 16 | 1  # of all-zero data
  stream = (b'\x78\xda' + piece * (side // rows_per_piece) + b'\x03\x00'  # final empty block
            + struct.pack('>I', adler32))

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data)))

  header = struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
  pathlib.Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                                 + chunk(b'IDAT', stream) + chunk(b'IEND', b''))
  return str(path)


def flax_batch_norm_relu(x, scale, bias):
  """(ReLU of nn.BatchNorm in training mode, batch mean, batch variance): XLA's formulation of
  `ops.batch_norm_relu`; momentum 0 puts the batch's statistics in batch_stats."""
  y, state = nn.BatchNorm(momentum=0.0, epsilon=1e-3).apply(
      {'params': {'scale': scale, 'bias': bias},
       'batch_stats': {'mean': jnp.zeros_like(scale), 'var': jnp.ones_like(scale)}},
      x, use_running_average=False, mutable=['batch_stats'])
  return nn.relu(y), state['batch_stats']['mean'], state['batch_stats']['var']
