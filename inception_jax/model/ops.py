"""Faster formulations of GoogLeNet's convolutions and max pools, in pure JAX.

Each function computes exactly what its plain XLA counterpart computes (to float
rounding) and runs unchanged on every backend; only the formulation differs:

  * `conv2d`: a 1x1, stride-1, unpadded convolution is a matrix product over the
    channels (`pointwise`), and XLA's `dot_general` (and its gradients) beats its
    convolution emitter on CPU. The inception blocks go further and compute the
    three 1x1 convolutions that read the block's input as one matrix product
    (`layers.pointwise_conv_relus`). A kernel larger than its input (the last
    blocks on small images) is a matrix product of gathered patches
    (`patches_conv2d`). Other convolutions are XLA's.
  * `max_pool`: for inference the maxima are taken along rows, then columns;
    differentiated, the forward pass takes them in one pass over the window
    cells and also stores, per output, which cell of its window holds the
    maximum (one byte), and the derivative is routed by those offsets instead
    of XLA's `select_and_scatter`, which is several times slower on CPU. Ties
    go to the first maximum of the window in row-major order, as
    `select_and_scatter` does, so the gradient is the same as `jax.grad`'s.
    Storing offsets instead of the pool's input and output also lowers the
    training step's peak memory. A bfloat16 input is pooled in float32.
  * `batch_norm_relu`: training-mode BatchNorm followed by ReLU with a
    hand-written derivative: one reduction and one elementwise pass over the
    input and the output gradient, where autodiff of the two layers makes
    several.

Both derivatives are `jax.custom_jvp` rules whose tangents are the transposes
(`jax.linear_transpose`) of the hand-written gradients, which are linear in
the cotangents. Forward mode (`jvp`, `jacfwd`, `linearize`, `hessian`) uses
the rules as written and reverse mode transposes them back into the
hand-written gradients, so one rule serves every transformation, `vmap` and
higher orders included, and training runs the fast gradients. (A tangent rule
written directly, as a gather of the tangent at the stored offsets, is just as
correct, but XLA runs its derived transpose several times slower on CPU.)

Measurements of each: experiments/results/cpu_tuning.md.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

from inception_jax import errors

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]
OPS = ('xla', 'fast')
AUTO = 'auto'
DEFAULT_OPS = AUTO  # the models' and the configs' default kernel set


def resolve(ops: str, platform: str | None = None) -> str:
  """The kernel set `ops` names: 'xla' or 'fast'; 'auto' is 'fast' on CPU, else 'xla'.

  The fast formulations were measured to help on CPU only, so other platforms
  default to XLA's own kernels. `platform` defaults to JAX's default backend.
  """
  if ops == AUTO:
    return 'fast' if (platform or jax.default_backend()) == 'cpu' else 'xla'
  if ops not in OPS:
    raise errors.ConfigError(f"unknown ops {ops!r}: use 'auto' (the platform's default), 'xla' "
                             "(XLA's own kernels) or 'fast' (inception_jax.model.ops).")
  return ops


def conv2d(x: Array, kernel: Array, stride: int = 1, padding: Padding = ((0, 0), (0, 0))
           ) -> Array:
  """NHWC x HWIO convolution.

  1x1 stride-1 unpadded ones are a channel matmul (`pointwise`); kernels larger
  than the input's height or width are a matmul over gathered patches
  (`patches_conv2d`); the rest are XLA's convolution.
  """
  if kernel.shape[:2] == (1, 1) and stride == 1 and padding == ((0, 0), (0, 0)):
    return pointwise(x, kernel[0, 0])
  if x.shape[1] < kernel.shape[0] or x.shape[2] < kernel.shape[1]:
    return patches_conv2d(x, kernel, stride, padding)
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def pointwise(x: Array, kernel: Array) -> Array:
  """[..., Cin] x [Cin, Cout] → [..., Cout]: a 1x1 convolution as a matrix product.

  The product is taken on `x` flattened to [rows, Cin], so the kernel's gradient
  is a plain two-dimensional product too, which is faster on CPU than contracting
  batch, height and width as three dimensions.
  """
  rows = x.reshape(-1, x.shape[-1])
  return lax.dot_general(rows, kernel, (((1,), (0,)), ((), ()))).reshape(
      *x.shape[:-1], kernel.shape[-1])


def patches_conv2d(x: Array, kernel: Array, stride: int = 1,
                   padding: Padding = ((0, 0), (0, 0))) -> Array:
  """NHWC x HWIO convolution as one matrix product of gathered patches (im2col).

  Used where the kernel is larger than the input (the last inception blocks on
  small images: a 3x3 on 2x2, a 5x5 on 4x4), where XLA's CPU convolution is
  much slower than this product.
  """
  kh, kw, cin, cout = kernel.shape
  padded = _pad_cells(x, padding, 0)
  _, height, width, _ = padded.shape
  out_hw = ((height - kh) // stride + 1, (width - kw) // stride + 1)
  taps = [_window_cells(padded, i, j, out_hw, stride) for i in range(kh) for j in range(kw)]
  return pointwise(jnp.concatenate(taps, axis=-1), kernel.reshape(kh * kw * cin, cout))


def max_pool(x: Array, window: int, stride: int, padding: Padding) -> Array:
  """NHWC max pool over `window` x `window` with a gradient routed by stored window offsets.

  Args:
    x: [batch, height, width, channels], floating point.
    window: the square window's side.
    stride: the step between windows, on both spatial axes.
    padding: ((low, high), (low, high)) padding of height and width; padded
      cells are -inf and never receive gradient.
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'max_pool needs a floating-point input, got {x.dtype}.')
  padding = tuple(map(tuple, padding))
  if x.dtype == jnp.bfloat16:
    # XLA's CPU loops over bfloat16 windows are several times slower than over float32
    # ones; float32 holds every bfloat16 value, so the maxima (and routes) are the same.
    return _max_pool(x.astype(jnp.float32), window, stride, padding).astype(x.dtype)
  return _max_pool(x, window, stride, padding)


def _pad_cells(x: Array, padding: Padding, value: float) -> Array:
  (top, bottom), (left, right) = padding
  return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _window_cells(padded: Array, i: int, j: int, out_hw: tuple[int, int], stride: int) -> Array:
  """The input cell at offset (i, j) of every output's window: an output-sized strided slice."""
  batch, _, _, channels = padded.shape
  span_h, span_w = ((size - 1) * stride + 1 for size in out_hw)
  return lax.slice(padded, (0, i, j, 0), (batch, i + span_h, j + span_w, channels),
                   (1, stride, stride, 1))


def _reduce_max(x: Array, window: int, stride: int, padding: Padding) -> Array:
  """The window maxima as a max over rows of a max over columns.

  Exact, and faster on CPU than XLA's two-dimensional reduce_window on all of
  GoogLeNet's pools but the first.
  """
  init = jnp.array(-jnp.inf, x.dtype)
  (top, bottom), (left, right) = padding
  rows = lax.reduce_window(x, init, lax.max, (1, 1, window, 1), (1, 1, stride, 1),
                           ((0, 0), (0, 0), (left, right), (0, 0)))
  return lax.reduce_window(rows, init, lax.max, (1, window, 1, 1), (1, stride, 1, 1),
                           ((0, 0), (top, bottom), (0, 0), (0, 0)))


def _offset_dtype(window: int) -> jnp.dtype:
  return jnp.dtype(jnp.int8 if window * window < 128 else jnp.int32)


def _max_and_offsets(x: Array, window: int, stride: int, padding: Padding
                     ) -> tuple[Array, Array]:
  """The window maxima and, per output, the row-major offset i * window + j of the
  first window cell holding the maximum, the cell `select_and_scatter` picks
  (the first cell where all are -inf, padding included). One pass over the window
  cells, which is faster than `_reduce_max` followed by a second pass for the offsets."""
  padded = _pad_cells(x, padding, -jnp.inf)
  batch, height, width, channels = padded.shape
  out_hw = ((height - window) // stride + 1, (width - window) // stride + 1)
  dtype = _offset_dtype(window)
  y = _window_cells(padded, 0, 0, out_hw, stride)
  offsets = jnp.zeros(y.shape, dtype)
  for k in range(1, window * window):
    cells = _window_cells(padded, *divmod(k, window), out_hw, stride)
    offsets = jnp.where(cells > y, jnp.asarray(k, dtype), offsets)
    y = jnp.maximum(y, cells)
  return y, offsets


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: Array, window: int, stride: int, padding: Padding) -> Array:
  return _reduce_max(x, window, stride, padding)


@_max_pool.defjvp
def _max_pool_jvp(window: int, stride: int, padding: Padding, primals: tuple[Array],
                  tangents: tuple[Array]) -> tuple[Array, Array]:
  """The maxima and, for each output, the input tangent at its stored offset.

  That gather is written as the transpose of `_route`, which is linear, so
  reverse mode transposes it back into `_route` itself: the gradient is routed
  phase by phase, the int8 offsets being all it keeps of the forward pass.
  """
  (x,), (dx,) = primals, tangents
  y, offsets = _max_and_offsets(x, window, stride, padding)
  route = functools.partial(_route, offsets=offsets, in_shape=x.shape, window=window,
                            stride=stride, padding=padding)
  (dy,) = jax.linear_transpose(route, jax.ShapeDtypeStruct(y.shape, dx.dtype))(dx)
  return y, dy


def _route(grad: Array, offsets: Array, in_shape: tuple[int, ...], window: int, stride: int,
           padding: Padding) -> Array:
  """Sends each output's gradient to the window cell its stored offset names.

  The input gradient is assembled phase by phase: the padded input's cells at
  row r ≡ a and column c ≡ b (mod stride) receive gradient only from the window
  offsets (i, j) ≡ (a, b), each from the output shifted by (i // stride, j //
  stride) whole cells. So each phase is one sum, at output resolution, of
  slices of the gradient and the offsets padded once (no scatter, no padding
  inside the sum), and one interleave builds the result.
  """
  (top, bottom), (left, right) = padding
  _, in_h, in_w, channels = in_shape
  batch, out_h, out_w, _ = grad.shape
  height, width = in_h + top + bottom, in_w + left + right
  rows, cols = -(-height // stride), -(-width // stride)  # cells per phase
  reach = (window - 1) // stride
  border = ((reach, rows - out_h), (reach, cols - out_w))
  grad_padded = _pad_cells(grad, border, 0)
  offsets_padded = _pad_cells(offsets, border, window * window)
  zero = jnp.zeros((), grad.dtype)
  phases = []
  for a in range(stride):
    for b in range(stride):
      phase = jnp.zeros((batch, rows, cols, channels), grad.dtype)
      for i in range(a, window, stride):
        for j in range(b, window, stride):
          start = (0, reach - i // stride, reach - j // stride, 0)
          limit = (batch, start[1] + rows, start[2] + cols, channels)
          hit = lax.slice(offsets_padded, start, limit) == i * window + j
          phase = phase + jnp.where(hit, lax.slice(grad_padded, start, limit), zero)
      phases.append(phase)
  dpadded = jnp.stack(phases, axis=3).reshape(batch, rows, cols, stride, stride, channels)
  dpadded = dpadded.transpose(0, 1, 3, 2, 4, 5).reshape(
      batch, rows * stride, cols * stride, channels)
  return dpadded[:, top:top + in_h, left:left + in_w, :]


def batch_norm_relu(x: Array, scale: Array, bias: Array, epsilon: float
                    ) -> tuple[Array, Array, Array]:
  """ReLU of training-mode BatchNorm over all axes but the last: (output, mean, variance).

  The batch statistics are float32 whatever `x`'s dtype, the variance
  E[x²] - E[x]² clipped at 0, as `flax.linen.BatchNorm` computes them (its
  default fast variance); the output has `x`'s dtype. The gradient with respect
  to `x`, `scale` and `bias` counts the paths through the mean and the variance
  and is `jax.grad`'s of the same formula (where the variance is not clipped).
  """
  return _batch_norm_relu(x, scale, bias, epsilon)


def _batch_norm(x: Array, scale: Array, bias: Array, epsilon: float
                ) -> tuple[Array, Array, Array, Array]:
  """BatchNorm before the ReLU, in float32: (output, mean, variance, σ⁻¹)."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axes)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes) - jnp.square(mean))
  inverse = lax.rsqrt(var + epsilon)
  return (x - mean) * (inverse * scale) + bias, mean, var, inverse


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _batch_norm_relu(x: Array, scale: Array, bias: Array, epsilon: float
                     ) -> tuple[Array, Array, Array]:
  z, mean, var, _ = _batch_norm(x, scale, bias, epsilon)
  return jnp.maximum(0.0, z).astype(x.dtype), mean, var


@_batch_norm_relu.defjvp
def _batch_norm_relu_jvp(epsilon: float, primals: tuple[Array, Array, Array],
                         tangents: tuple[Array, Array, Array]
                         ) -> tuple[tuple[Array, Array, Array], tuple[Array, Array, Array]]:
  """The outputs and their tangents, written as the transpose of `_batch_norm_relu_grad`,
  which is linear in the cotangents: reverse mode transposes them back into it."""
  x, scale, bias = primals
  z, mean, var, inverse = _batch_norm(x, scale, bias, epsilon)
  y = jnp.maximum(0.0, z).astype(x.dtype)
  grad = functools.partial(_batch_norm_relu_grad, x, scale, bias, mean, inverse)
  outputs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (y, mean, var)]
  return (y, mean, var), jax.linear_transpose(grad, *outputs)(tuple(tangents))


def _batch_norm_relu_grad(x: Array, scale: Array, bias: Array, mean: Array, inverse: Array,
                          dy: Array, dmean: Array, dvar: Array) -> tuple[Array, Array, Array]:
  """With x̂ = (x - mean)/σ, g = dy where the output is positive, m the rows:
  dbias = Σg, dscale = Σ g·x̂, dx = scale/σ · (g - dbias/m - x̂·dscale/m)
  + dmean/m + dvar·2(x - mean)/m (the statistics' own cotangents): one reduction
  and one elementwise pass, where autodiff of the two layers makes several."""
  axes = tuple(range(x.ndim - 1))
  rows = x.size // x.shape[-1]
  centered = x.astype(jnp.float32) - mean
  normalized = centered * inverse
  g = jnp.where(normalized * scale + bias > 0, dy.astype(jnp.float32), 0.0)
  dbias = jnp.sum(g, axes)
  dscale = jnp.sum(g * normalized, axes)
  dx = ((scale * inverse) * (g - (dbias + normalized * dscale) / rows)
        + (dmean + 2.0 * dvar * centered) / rows)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)
