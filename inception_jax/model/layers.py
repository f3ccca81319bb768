"""Layers GoogLeNet needs that Flax does not ship, with Caffe's semantics.

Caffe's `bvlc_googlenet` is the reference for what the paper leaves open:
pooling output sizes round up (ceil mode) and LRN normalizes across channels.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax.model import ops as ops_lib

Array = jax.Array


def ceil_pool_output_size(size: int, window: int, stride: int, pad: int = 0) -> int:
  """Caffe's (and torch's ceil_mode) pooling output size; 0 if the input is too small.

  out = ceil((size + 2*pad - window) / stride) + 1, minus one if the last window
  would start in the padding. A window that overhangs the input is clipped.
  """
  out = max(0, -(-(size + 2 * pad - window) // stride) + 1)
  if pad and out and (out - 1) * stride >= size + pad:
    out -= 1
  return out


def ceil_pool_padding(size: int, window: int, stride: int, pad: int) -> tuple[int, int]:
  """Returns (low, high) padding that gives Caffe's ceil-mode pooling output size."""
  out = ceil_pool_output_size(size, window, stride, pad)
  if out < 1:
    raise ValueError(f'a {window}x{window}/{stride} pool cannot reduce {size} pixels: '
                     'the input image is too small for this network.')
  high = (out - 1) * stride + window - size - pad
  return pad, max(high, 0)


class MaxPool(nn.Module):
  """Max pooling with Caffe's ceil-mode output size (224 → 112 → 56 → 28 → 14 → 7).

  `ops='fast'` computes the same with `ops.max_pool` (gradient routed by stored window offsets).
  """
  window: int = 3
  stride: int = 2
  pad: int = 0
  ops: str = ops_lib.DEFAULT_OPS

  @nn.compact
  def __call__(self, x: Array) -> Array:
    padding = tuple(ceil_pool_padding(x.shape[d], self.window, self.stride, self.pad)
                    for d in (1, 2))
    if ops_lib.resolve(self.ops) == 'fast':
      return ops_lib.max_pool(x, self.window, self.stride, padding)
    return nn.max_pool(x, (self.window, self.window), (self.stride, self.stride),
                       padding=padding)


class AvgPool(nn.Module):
  """Average pooling without padding (the auxiliary heads' 5x5/3)."""
  window: int
  stride: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return nn.avg_pool(x, (self.window, self.window), (self.stride, self.stride))


class AdaptiveAvgPool(nn.Module):
  """Average pooling to a fixed spatial size, like `torch.nn.AdaptiveAvgPool2d`.

  Output cell (i, j) averages input rows floor(i*H/out)..ceil((i+1)*H/out)-1 and
  likewise for columns; for inputs smaller than `size` cells repeat input pixels.
  """
  size: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _adaptive_mean(_adaptive_mean(x, 1, self.size), 2, self.size)


def _adaptive_mean(x: Array, axis: int, out: int) -> Array:
  size = x.shape[axis]
  if size % out == 0:
    # Equal cells: one mean over a reshaped axis, where the per-cell slices and their
    # concatenation cost a fused loop per cell (and their gradient a padded sum).
    cells_shape = (*x.shape[:axis], out, size // out, *x.shape[axis + 1:])
    return jnp.mean(x.reshape(cells_shape), axis=axis + 1)
  cells = []
  for i in range(out):
    start, stop = (i * size) // out, -((-(i + 1) * size) // out)
    cells.append(jnp.mean(jax.lax.slice_in_dim(x, start, stop, axis=axis), axis=axis,
                          keepdims=True))
  return jnp.concatenate(cells, axis=axis)


class GlobalAvgPool(nn.Module):
  """Mean over the spatial axes, for any input size."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


class LocalResponseNorm(nn.Module):
  """Caffe's across-channel LRN: x / (k + alpha/n · Σ_window x²)^beta.

  The window covers `size` channels centred on each channel (zero beyond the
  edges). TensorFlow's `tf.nn.local_response_normalization` computes the same
  with depth_radius=(size-1)/2, bias=k, alpha=alpha/size, beta=beta.
  """
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.size % 2 != 1:
      raise ValueError(f'LRN size must be odd, got {self.size}.')
    half = self.size // 2
    squared = jnp.square(x.astype(jnp.float32))
    padded = jnp.pad(squared, [(0, 0)] * (x.ndim - 1) + [(half, half)])
    channels = x.shape[-1]
    window_sum = sum(padded[..., i:i + channels] for i in range(self.size))
    scale = self.k + (self.alpha / self.size) * window_sum
    return x * jnp.power(scale, -self.beta).astype(x.dtype)


class FastConv(nn.Conv):
  """`nn.Conv` (same parameters, same result) computed with `ops.conv2d`.

  Only what GoogLeNet uses: 2-D, NHWC, explicit padding, no dilation or groups.
  """

  @nn.compact
  def promoted(self, inputs: Array) -> tuple[Array, Array, Array | None]:
    """(inputs, kernel, bias or None), all in the compute dtype; creates the parameters."""
    if (inputs.ndim != 4 or isinstance(self.padding, str) or self.feature_group_count != 1
        or self.input_dilation not in (1, (1, 1))
        or self.kernel_dilation not in (1, (1, 1))):
      raise ValueError('FastConv supports NHWC inputs with explicit padding and no dilation '
                       "or groups; use ops='xla' (nn.Conv) for anything else.")
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, inputs.shape[-1], self.features), self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)

  def __call__(self, inputs: Array) -> Array:
    inputs, kernel, bias = self.promoted(inputs)
    stride = self.strides if isinstance(self.strides, int) else self.strides[0]
    y = ops_lib.conv2d(inputs, kernel, stride, tuple(map(tuple, self.padding)))
    return y if bias is None else y + bias


class BatchNormReLU(nn.Module):
  """ReLU of `nn.BatchNorm` (same variables, statistics and results) via `ops.batch_norm_relu`.

  In training mode the batch statistics normalize and update the running
  averages (`momentum` keeps that much of the old value); in evaluation mode the
  running averages normalize.
  """
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    channels = (x.shape[-1],)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, channels, jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, channels, jnp.float32)
    scale = self.param('scale', nn.initializers.ones, channels, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, channels, jnp.float32)
    dtype = self.dtype or x.dtype
    if use_running_average:
      inverse = jax.lax.rsqrt(running_var.value + self.epsilon)
      return nn.relu((x - running_mean.value) * (inverse * scale) + bias).astype(dtype)
    y, mean, var = ops_lib.batch_norm_relu(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
      running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
    return y.astype(dtype)


class ConvReLU(nn.Module):
  """Convolution (Caffe padding: kernel//2 on each side) → optional BatchNorm → ReLU.

  `ops='fast'` computes the convolution with `ops.conv2d` and BatchNorm + ReLU
  with `BatchNormReLU`; parameters are the same.
  """
  features: int
  kernel: int
  stride: int = 1
  batch_norm: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  ops: str = ops_lib.DEFAULT_OPS

  def setup(self) -> None:
    fast = ops_lib.resolve(self.ops) == 'fast'
    pad = self.kernel // 2
    conv = FastConv if fast else nn.Conv
    self.conv = conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                     padding=((pad, pad), (pad, pad)), use_bias=not self.batch_norm,
                     dtype=self.dtype, kernel_init=self.kernel_init, bias_init=self.bias_init)
    if self.batch_norm:
      norm = BatchNormReLU if fast else nn.BatchNorm
      self.bn = norm(momentum=0.9, epsilon=1e-3, dtype=self.dtype)

  def __call__(self, x: Array, train: bool) -> Array:
    return self.activate(self.conv(x), train)

  def activate(self, y: Array, train: bool) -> Array:
    """BatchNorm (if on) and ReLU of the convolution's output `y`."""
    if not self.batch_norm:
      return nn.relu(y)
    y = self.bn(y, use_running_average=not train)
    return y if isinstance(self.bn, BatchNormReLU) else nn.relu(y)


def pointwise_conv_relus(convs: Sequence[ConvReLU], x: Array, train: bool) -> list[Array]:
  """`[conv(x, train) for conv in convs]` for 1x1 `ops='fast'` convs, as one matrix product.

  The kernels are concatenated on their output channels, multiplied with `x`
  once, and the product split back per conv: the same arithmetic and the same
  parameters (each conv keeps its own) with one pass over `x` instead of one per conv.
  """
  for conv in convs:
    if (conv.kernel, conv.stride, ops_lib.resolve(conv.ops)) != (1, 1, 'fast'):
      raise ValueError(f'pointwise_conv_relus fuses 1x1 stride-1 ConvReLUs with '
                       f"ops='fast'; got kernel {conv.kernel}, stride {conv.stride}, "
                       f'ops {conv.ops!r}. Call such a conv on its own.')
  promoted = [conv.conv.promoted(x) for conv in convs]
  x = promoted[0][0]
  y = ops_lib.pointwise(x, jnp.concatenate([k[0, 0] for _, k, _ in promoted], axis=-1))
  if all(b is not None for _, _, b in promoted):
    y = y + jnp.concatenate([b for _, _, b in promoted])
  elif any(b is not None for _, _, b in promoted):
    raise ValueError('pointwise_conv_relus needs all convs with a bias or all without.')
  parts = jnp.split(y, np.cumsum([conv.features for conv in convs])[:-1], axis=-1)
  return [conv.activate(part, train) for conv, part in zip(convs, parts)]
