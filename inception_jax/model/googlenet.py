"""GoogLeNet (Inception v1, Szegedy et al. 2014, arXiv 1409.4842) in Flax linen.

`GoogLeNet` follows the paper's Table 1 and Figure 3, with the BVLC Caffe model
(`bvlc_googlenet`) settling what the paper leaves open: Caffe padding (kernel//2),
ceil-mode max pools, LRN across 5 channels, ReLU after every convolution, aux
heads on 4a and 4d. `googlenet_bn` is torchvision's topology (BatchNorm, 3x3 in
the "5x5" branch, 2x2 pool before 5a) so that torchvision weights load.

Call with ``model.apply(variables, images, train=...)``: images are float NHWC,
already normalized. The result is always a `ModelOutput`; `aux_logits` holds
the two auxiliary heads' logits in training mode and is the empty tuple in
evaluation mode (the heads are neither computed nor needed there).

`init` always creates the aux heads' parameters (when `aux_heads` is on), in
either mode, so one parameter tree serves training, evaluation and export.

Stage outputs and the pooled 1024-d features are sown into the
``'intermediates'`` collection; `extract_features` returns them.

Initialization (`init_scheme`):
  * ``'caffe'``: bvlc_googlenet's fillers — "xavier" (uniform ±sqrt(3/fan_in))
    weights, bias 0.2, classifier biases 0. Default for the paper topology.
  * ``'he'``: truncated normal with variance 2/fan_in, biases 0 (He et al. 2015),
    which trains this deep ReLU stack from scratch without BatchNorm much faster.
  * ``'torchvision'``: truncated normal std 0.01 in [-0.02, 0.02], biases 0,
    BatchNorm scale 1 and bias 0. Default for the BatchNorm topology.
"""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax import errors
from inception_jax import xla_options
from inception_jax.model import layers
from inception_jax.model import ops as ops_lib

Array = jax.Array

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION_WIDTHS = {
    '3a': (64, 96, 128, 16, 32, 32),
    '3b': (128, 128, 192, 32, 96, 64),
    '4a': (192, 96, 208, 16, 48, 64),
    '4b': (160, 112, 224, 24, 64, 64),
    '4c': (128, 128, 256, 24, 64, 64),
    '4d': (112, 144, 288, 32, 64, 64),
    '4e': (256, 160, 320, 32, 128, 128),
    '5a': (256, 160, 320, 32, 128, 128),
    '5b': (384, 192, 384, 48, 128, 128),
}
AUX_POOL_SIZE = 4  # the aux heads see 4x4 maps (4x4x512 after 4a, 4x4x528 after 4d)


@flax.struct.dataclass
class ModelOutput:
  """What every GoogLeNet returns, in both modes.

  Attributes:
    logits: [batch, num_classes] float32 logits of the main classifier.
    aux_logits: the two auxiliary classifiers' [batch, num_classes] float32
      logits (on 4a, then 4d) in training mode with aux heads on; else ().
  """
  logits: Array
  aux_logits: tuple[Array, ...] = ()


@functools.lru_cache(maxsize=None)
def _initializers(init: str) -> dict[str, Callable[..., Array]]:
  if init == 'caffe':
    return dict(kernel=nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform'),
                bias=nn.initializers.constant(0.2),
                classifier_bias=nn.initializers.zeros)
  if init == 'he':
    return dict(kernel=nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
                bias=nn.initializers.zeros,
                classifier_bias=nn.initializers.zeros)
  if init == 'torchvision':
    return dict(kernel=nn.initializers.truncated_normal(0.01),
                bias=nn.initializers.zeros,
                classifier_bias=nn.initializers.zeros)
  raise errors.ConfigError(f"unknown init {init!r}: use 'caffe', 'he' or 'torchvision'.")


class InceptionBlock(nn.Module):
  """Figure 2: four branches concatenated on channels.

  Reduced (2b): 1x1 | 1x1 → 3x3 | 1x1 → 5x5 | 3x3/1 max pool → 1x1 projection.
  Naive (2a): 1x1 | 3x3 | 5x5 | 3x3/1 max pool, no reductions or projection, so
  the output has n1x1 + n3x3 + n5x5 + input channels. With `ops='fast'` the
  three 1x1 convolutions that read the input run as one matrix product.
  """
  widths: tuple[int, int, int, int, int, int]
  naive: bool = False
  large_kernel: int = 5
  batch_norm: bool = False
  dtype: Any = jnp.float32
  init_scheme: str = 'caffe'
  ops: str = ops_lib.DEFAULT_OPS

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = self.widths
    inits = _initializers(self.init_scheme)
    conv = functools.partial(layers.ConvReLU, batch_norm=self.batch_norm, dtype=self.dtype,
                             kernel_init=inits['kernel'], bias_init=inits['bias'], ops=self.ops)
    pooled = layers.MaxPool(3, 1, 1, ops=self.ops, name='pool')(x)
    if self.naive:
      branches = [conv(n1x1, 1, name='1x1')(x, train),
                  conv(n3x3, 3, name='3x3')(x, train),
                  conv(n5x5, self.large_kernel, name='5x5')(x, train),
                  pooled]
    else:
      reduce3 = conv(n3x3_reduce, 1, name='3x3_reduce')
      reduce5 = conv(n5x5_reduce, 1, name='5x5_reduce')
      out1x1 = conv(n1x1, 1, name='1x1')
      if ops_lib.resolve(self.ops) == 'fast':
        reduce3, reduce5, out1x1 = layers.pointwise_conv_relus([reduce3, reduce5, out1x1], x,
                                                               train)
      else:
        reduce3, reduce5, out1x1 = reduce3(x, train), reduce5(x, train), out1x1(x, train)
      branches = [out1x1,
                  conv(n3x3, 3, name='3x3')(reduce3, train),
                  conv(n5x5, self.large_kernel, name='5x5')(reduce5, train),
                  conv(pool_proj, 1, name='pool_proj')(pooled, train)]
    return jnp.concatenate(branches, axis=-1)


class AuxHead(nn.Module):
  """Auxiliary classifier: pool to 4x4 → 1x1 conv 128 → FC 1024 → dropout → FC.

  The paper's pool is 5x5 stride 3 (14x14 → 4x4 at 224). Where that does not
  give 4x4 (other input sizes), or with `adaptive_pool`, an adaptive average
  pool to 4x4 is used instead, as torchvision does, so the heads' weights fit
  any input size.
  """
  num_classes: int
  conv_features: int = 128
  hidden: int = 1024
  dropout_rate: float = 0.7
  adaptive_pool: bool = False
  batch_norm: bool = False
  dtype: Any = jnp.float32
  init_scheme: str = 'caffe'
  ops: str = ops_lib.DEFAULT_OPS

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    inits = _initializers(self.init_scheme)
    paper_pool_size = (min(x.shape[1:3]) - 5) // 3 + 1
    if self.adaptive_pool or paper_pool_size != AUX_POOL_SIZE or x.shape[1] != x.shape[2]:
      x = layers.AdaptiveAvgPool(AUX_POOL_SIZE, name='pool')(x)
    else:
      x = layers.AvgPool(5, 3, name='pool')(x)
    x = layers.ConvReLU(self.conv_features, 1, batch_norm=self.batch_norm, dtype=self.dtype,
                        kernel_init=inits['kernel'], bias_init=inits['bias'], ops=self.ops,
                        name='conv')(x, train)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=inits['kernel'],
                         bias_init=inits['bias'], name='fc')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=inits['kernel'],
                    bias_init=inits['classifier_bias'], name='classifier')(x)


class GoogLeNet(nn.Module):
  """GoogLeNet / Inception v1.

  Attributes:
    num_classes: classifier outputs.
    aux_heads: build the two auxiliary classifiers (used in training only).
    lrn: local response normalization after pool1 and conv2 (paper, Caffe).
    naive_blocks: Figure 2(a) blocks (no 1x1 reductions) instead of 2(b).
    batch_norm: BatchNorm after every convolution (convolutions lose their bias).
    large_kernel: kernel of the "5x5" branch (5 in the paper, 3 in torchvision).
    pool4_window: window of the stride-2 max pool before 5a (3 paper, 2 torchvision).
    adaptive_aux_pool: always pool the aux inputs adaptively to 4x4.
    dropout_rate: dropout before the classifier (0.4 paper, 0.2 torchvision).
    aux_dropout_rate: dropout in the aux heads (0.7).
    width: multiplies every channel count (1.0 = paper; < 1 for tests).
    blocks: the inception modules built, in Table 1's order (all nine = paper; fewer
      for tests). The pools before 4a and 5a stay; an aux head follows 4a and 4d when built.
    dtype: compute dtype; parameters are always float32, logits float32.
    init_scheme: 'caffe', 'he' or 'torchvision' (see the module docstring).
    ops: 'xla' (XLA's convolutions and pools, flax's BatchNorm), 'fast' (`inception_jax.model.ops`:
      the same results from faster formulations; same parameters) or 'auto' (the
      platform's choice, `ops.resolve`).
  """
  num_classes: int = 1000
  aux_heads: bool = True
  lrn: bool = True
  naive_blocks: bool = False
  batch_norm: bool = False
  large_kernel: int = 5
  pool4_window: int = 3
  adaptive_aux_pool: bool = False
  dropout_rate: float = 0.4
  aux_dropout_rate: float = 0.7
  width: float = 1.0
  blocks: tuple[str, ...] = tuple(INCEPTION_WIDTHS)
  dtype: Any = jnp.float32
  init_scheme: str = 'caffe'
  ops: str = ops_lib.DEFAULT_OPS

  def min_input_size(self) -> int:
    """The smallest image side that survives conv1 and the four stride-2 pools."""
    def survives(size: int) -> bool:
      size = (size - 1) // 2 + 1  # conv1 7x7/2, pad 3
      for window in (3, 3, 3, self.pool4_window):
        size = layers.ceil_pool_output_size(size, window, 2)
      return size >= 1
    return next(size for size in range(1, 1024) if survives(size))

  def _channels(self, n: int) -> int:
    return max(1, round(n * self.width))

  def _layout(self) -> list[str]:
    """`blocks` with the stride-2 pools between stages 3, 4 and 5."""
    order = list(INCEPTION_WIDTHS)
    if (not self.blocks or not set(self.blocks) <= set(order)
        or list(self.blocks) != sorted(set(self.blocks), key=order.index)):
      raise errors.ConfigError(
          f'blocks {tuple(self.blocks)} must be some of {tuple(order)}, in that order.')
    stage = {s: [b for b in self.blocks if b[0] == s] for s in '345'}
    return stage['3'] + ['pool3'] + stage['4'] + ['pool4'] + stage['5']

  @nn.compact
  def __call__(self, x: Array, train: bool) -> ModelOutput:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'GoogLeNet expects NHWC images [batch, height, width, 3], '
                       f'got shape {x.shape}.')
    smallest = self.min_input_size()
    if min(x.shape[1:3]) < smallest:
      raise errors.ConfigError(f'images of {x.shape[1]}x{x.shape[2]} are too small for this '
                               f'GoogLeNet: it needs at least {smallest}x{smallest} pixels '
                               '(image_size).')
    inits = _initializers(self.init_scheme)
    ops = ops_lib.resolve(self.ops)  # once, for every layer
    conv = functools.partial(layers.ConvReLU, batch_norm=self.batch_norm, dtype=self.dtype,
                             kernel_init=inits['kernel'], bias_init=inits['bias'], ops=ops)
    max_pool = functools.partial(layers.MaxPool, ops=ops)
    block = functools.partial(InceptionBlock, naive=self.naive_blocks,
                              large_kernel=self.large_kernel, batch_norm=self.batch_norm,
                              dtype=self.dtype, init_scheme=self.init_scheme, ops=ops)
    aux_head = functools.partial(
        AuxHead, num_classes=self.num_classes, conv_features=self._channels(128),
        hidden=self._channels(1024), dropout_rate=self.aux_dropout_rate,
        adaptive_pool=self.adaptive_aux_pool, batch_norm=self.batch_norm, dtype=self.dtype,
        init_scheme=self.init_scheme, ops=ops)
    lrn = layers.LocalResponseNorm if self.lrn else None

    def stage(name: str, y: Array) -> Array:
      self.sow('intermediates', f'{name}_output', y)
      return y

    x = x.astype(self.dtype)
    x = stage('conv1', conv(self._channels(64), 7, 2, name='conv1')(x, train))
    x = max_pool(3, 2, name='pool1')(x)
    if lrn:
      x = lrn(name='norm1')(x)
    x = conv(self._channels(64), 1, name='conv2_reduce')(x, train)
    x = stage('conv2', conv(self._channels(192), 3, name='conv2')(x, train))
    if lrn:
      x = lrn(name='norm2')(x)
    x = max_pool(3, 2, name='pool2')(x)
    aux_logits = []
    for name in self._layout():
      if name == 'pool3':
        x = max_pool(3, 2, name=name)(x)
        continue
      if name == 'pool4':
        x = max_pool(self.pool4_window, 2, name=name)(x)
        continue
      widths = tuple(self._channels(n) for n in INCEPTION_WIDTHS[name])
      x = stage(f'inception_{name}', block(widths, name=f'inception_{name}')(x, train))
      if name in ('4a', '4d') and self.aux_heads and (train or self.is_initializing()):
        aux_logits.append(aux_head(name=f'aux{len(aux_logits) + 1}')(x, train))
    x = stage('pooled', layers.GlobalAvgPool(name='avgpool')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=inits['kernel'],
                      bias_init=inits['classifier_bias'], name='classifier')(x)
    aux_logits = tuple(a.astype(jnp.float32) for a in aux_logits) if train else ()
    return ModelOutput(logits=logits.astype(jnp.float32), aux_logits=aux_logits)


googlenet_bn = functools.partial(GoogLeNet, batch_norm=True, lrn=False, large_kernel=3,
                                 pool4_window=2, adaptive_aux_pool=True, dropout_rate=0.2,
                                 init_scheme='torchvision')
googlenet_naive = functools.partial(GoogLeNet, naive_blocks=True)
_TINY_WIDTH = 1 / 8  # test variants: same topology, channels / 8
googlenet_tiny = functools.partial(GoogLeNet, width=_TINY_WIDTH)
googlenet_bn_tiny = functools.partial(googlenet_bn, width=_TINY_WIDTH)
# For tests of what the network's depth does not change (checkpoints, resumption,
# processes): channels / 8 and four modules, both aux heads kept.
googlenet_bn_shallow = functools.partial(googlenet_bn_tiny, blocks=('3a', '4a', '4d', '5b'))

MODELS: dict[str, Callable[..., GoogLeNet]] = {
    'googlenet': GoogLeNet,
    'googlenet_bn': googlenet_bn,
    'googlenet_naive': googlenet_naive,
    'googlenet_tiny': googlenet_tiny,
    'googlenet_bn_tiny': googlenet_bn_tiny,
    'googlenet_bn_shallow': googlenet_bn_shallow,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
AUTO_DTYPE = 'auto'


def resolve_dtype(name: str, platform: str | None = None) -> str:
  """A compute dtype's name; 'auto' is float32 on CPU and bfloat16 on GPUs and TPUs.

  bfloat16 is what GPU and TPU matrix units are fast in; on CPU it is faster than
  float32 only on some stacks and CPUs (oneDNN's kernels, `xla_options.CPU_BFLOAT16`),
  so there it is asked for by name. `platform` defaults to JAX's default backend.
  """
  if name == AUTO_DTYPE:
    return 'float32' if (platform or jax.default_backend()) == 'cpu' else 'bfloat16'
  if name not in DTYPES:
    raise errors.ConfigError(
        f"unknown dtype {name!r}; choose 'auto' or one of {sorted(DTYPES)}.")
  return name


def create_model(name: str, **options: Any) -> GoogLeNet:
  """Builds a named variant; `options` override its fields (e.g. num_classes=10).

  An option given as None keeps the variant's value. `dtype` may be given as a
  string ('auto', 'float32', 'bfloat16', 'float16').
  """
  options = {k: v for k, v in options.items() if v is not None}
  if name not in MODELS:
    raise errors.ConfigError(f'unknown model {name!r}; choose one of {sorted(MODELS)}.')
  if isinstance(options.get('dtype'), str):
    options['dtype'] = DTYPES[resolve_dtype(options['dtype'])]
  fields = set(GoogLeNet.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise errors.ConfigError(
        f'unknown model options {unknown}; valid options: {sorted(fields)}.')
  return MODELS[name](**options)


def extract_features(model: GoogLeNet, variables: Any, images: Array) -> dict[str, Array]:
  """Returns each stage's output and the pooled features ('pooled'), eval mode."""
  _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
  return {name.removesuffix('_output'): values[0]
          for name, values in state['intermediates'].items()}


def init_variables(model: GoogLeNet, rng: Array, image_shape: tuple[int, ...],
                   out_shardings: Any = None) -> Any:
  """Initializes all variables (aux heads included) for images of `image_shape`.

  Compiled once with `xla_options.fast_compile`; `out_shardings` (e.g. a replicated
  `NamedSharding`) places the variables directly where they belong.
  """
  init = jax.jit(lambda key: model.init(key, jnp.zeros(image_shape, jnp.float32), train=False),
                 out_shardings=out_shardings)
  return init.lower(rng).compile(compiler_options=xla_options.fast_compile())(rng)


def model_variables(params: Any, batch_stats: Any = None, ema_params: Any = None
                    ) -> dict[str, Any]:
  """The variables to apply a model with: `ema_params` (when given) in place of `params`.

  'batch_stats' is included only for models that have them.
  """
  variables = {'params': params if ema_params is None else ema_params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return variables


def named_leaves(tree: Any) -> dict[str, Any]:
  """The leaves of a variable tree by '/'-joined path, e.g. 'inception_3a/1x1/conv/kernel'."""
  return {'/'.join(path): leaf for path, leaf in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def from_named_leaves(named: Any) -> dict[str, Any]:
  """The nested tree of a {'/'-joined path: leaf} mapping (the inverse of `named_leaves`)."""
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in named.items()})
