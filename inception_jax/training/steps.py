"""The training state and the pure, jit-compiled training and evaluation steps.

Sharding (`inception_jax.sharding`): batches are split over the mesh's 'data'
axis and the state is replicated. Under `jax.jit` with a sharded batch every mean
over the batch axis (the loss, BatchNorm's statistics) is over the global batch.

Randomness: the state holds one base key; step s uses fold_in(key, s) as the
'dropout' stream (flax derives a distinct key per Dropout module from it). With
`jax_threefry_partitionable` (JAX's default), the random bits of an array do not
depend on how it is sharded, so dropout masks, and so the whole step, are the
same on one device or many.

Steps and updates: `TrainState.step` counts training steps (batches). With
`config.grad_accum_steps` = k, the optimizer applies an update every k steps (see
`inception_jax.training.optim`); the EMA of the parameters follows the updates.
"""

import functools
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import optax

from inception_jax import errors
from inception_jax import metrics as metrics_lib
from inception_jax import sharding
from inception_jax import xla_options
from inception_jax.data import pixels as pixels_lib
from inception_jax.model import googlenet
from inception_jax.sharding import Batch
from inception_jax.training import optim
from inception_jax.training.optim import Params

Array = jax.Array
Metrics = dict[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; a pytree orbax saves whole.

  Attributes:
    step: training steps taken (int32 scalar).
    params: the model parameters (float32).
    batch_stats: BatchNorm running statistics; {} for models without BatchNorm.
    opt_state: the optimizer state.
    ema_params: the Polyak average of params when ema_decay > 0, else None.
    rng: the base random key as raw uint32 key data (`jax.random.key_data`).
    apply_fn: the model's apply function (static).
    tx: the optimizer (static).
    learning_rate_fn: the schedule, a function of the optimizer update count (static).
    mean_rgb, std_rgb: the normalization of the batches' uint8 pixels into model
      inputs, on 0..255 (static).
    grad_accum_steps: training steps per optimizer update (static).
    ema_decay: the EMA decay per update; 0 when off (static).
  """
  step: Array
  params: Params
  batch_stats: Params
  opt_state: optax.OptState
  ema_params: Params | None
  rng: Array
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  learning_rate_fn: optax.Schedule = flax.struct.field(pytree_node=False)
  mean_rgb: tuple[float, ...] = flax.struct.field(pytree_node=False)
  std_rgb: tuple[float, ...] = flax.struct.field(pytree_node=False)
  grad_accum_steps: int = flax.struct.field(pytree_node=False, default=1)
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

  def eval_variables(self) -> dict[str, Params]:
    """The variables evaluation uses: the EMA parameters when there are any."""
    return googlenet.model_variables(self.params, self.batch_stats, self.ema_params)

  def model_input(self, pixels: Array) -> Array:
    """The model's input from a batch's uint8 pixels (`pixels.normalize`)."""
    return pixels_lib.normalize(pixels, self.mean_rgb, self.std_rgb)


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       image_shape: tuple[int, ...], mesh: Mesh, steps_per_epoch: int,
                       trainable_mask: optim.TrainableMask | None = None
                       ) -> tuple[TrainState, TrainState]:
  """Initializes the training state directly replicated over `mesh`.

  Args:
    config: the experiment configuration (seed, optimizer, ema_decay, ...).
    model: the flax module, e.g. from `models.create_model`.
    image_shape: the shape of the images to initialize with, [batch, H, W, 3];
      a batch of one is enough.
    mesh: the device mesh (`sharding.create_mesh`).
    steps_per_epoch: training steps per epoch, for the schedules.
    trainable_mask: which parameters to train (see `optim.create_optimizer`).

  Returns:
    (state, state_sharding): the state, and a state-shaped tree of its shardings.
  """
  initialize, abstract_state = train_state_initializer(config, model, image_shape, mesh,
                                                       steps_per_epoch, trainable_mask)
  return initialize(), shardings_of(abstract_state)


def train_state_initializer(config: ml_collections.ConfigDict, model: nn.Module,
                            image_shape: tuple[int, ...], mesh: Mesh, steps_per_epoch: int,
                            trainable_mask: optim.TrainableMask | None = None
                            ) -> tuple[Callable[[], TrainState], TrainState]:
  """(initialize, abstract_state) for the state `create_train_state` makes.

  `abstract_state` is that state as `jax.ShapeDtypeStruct`s with their (replicated)
  shardings, from tracing the initialization once without computing anything:
  enough to compile the training step or restore a checkpoint before, or instead
  of, initializing. `initialize()` lowers that same trace, compiles and runs it with
  the replicated sharding as `out_shardings`, so no copy of the state is first made
  on one device. Both share the optimizer and schedule, so steps compiled for one
  accept the other. Same arguments as `create_train_state`.
  """
  tx = optim.create_optimizer(config, steps_per_epoch, trainable_mask)
  learning_rate_fn = optim.create_learning_rate_schedule(config, steps_per_epoch)

  def init(key: Array) -> TrainState:
    params_key, dropout_key = jax.random.split(key)
    variables = model.init({'params': params_key}, jnp.zeros(image_shape, jnp.float32),
                           train=False)
    params = variables['params']
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
        ema_params=params if config.ema_decay > 0 else None,
        rng=jax.random.key_data(dropout_key), apply_fn=model.apply, tx=tx,
        learning_rate_fn=learning_rate_fn, mean_rgb=tuple(config.mean_rgb),
        std_rgb=tuple(config.std_rgb), grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.ema_decay)

  key = jax.random.key(config.seed)
  state_sharding = sharding.replicated(mesh)
  traced = jax.jit(init, out_shardings=state_sharding).trace(key)
  abstract_state = jax.tree.map(
      lambda aval: jax.ShapeDtypeStruct(aval.shape, aval.dtype, sharding=state_sharding),
      traced.out_avals)

  def initialize() -> TrainState:
    compiled = traced.lower().compile(compiler_options=xla_options.fast_compile())
    return compiled(key)

  return initialize, abstract_state


def shardings_of(abstract_state: TrainState) -> TrainState:
  """The state-shaped tree of shardings of an abstract state (`train_state_initializer`)."""
  return jax.tree.map(lambda leaf: leaf.sharding, abstract_state)


def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
  """Per-example softmax cross-entropy with integer labels, optionally label-smoothed.

  With smoothing a, the target is (1 - a) * one_hot + a / num_classes.
  """
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def classification_loss(output: googlenet.ModelOutput, labels: Array, aux_weight: float,
                        label_smoothing: float = 0.0) -> tuple[Array, Metrics]:
  """The GoogLeNet loss: CE(main) + aux_weight * (CE(aux1) + CE(aux2)), batch means.

  Returns:
    (loss, terms): terms has 'loss', 'main_loss' and, for each aux head,
    'aux1_loss', 'aux2_loss' (reported even when aux_weight is 0, which leaves
    them out of the loss).
  """
  main_loss = cross_entropy(output.logits, labels, label_smoothing).mean()
  terms = {'main_loss': main_loss}
  loss = main_loss
  for index, aux_logits in enumerate(output.aux_logits, start=1):
    aux_loss = cross_entropy(aux_logits, labels, label_smoothing).mean()
    terms[f'aux{index}_loss'] = aux_loss
    if aux_weight:
      loss = loss + aux_weight * aux_loss
  return loss, {'loss': loss, **terms}


def model_loss(model: nn.Module, variables: Mapping[str, Params], batch: Batch,
               rng: Array | None = None, train: bool = True, *, aux_weight: float = 0.3,
               label_smoothing: float = 0.0) -> tuple[Array, tuple[Metrics, Params]]:
  """The paper's loss of `model` with `variables` on `batch`, a pure function.

  Args:
    model: a GoogLeNet (`create_model`).
    variables: {'params': ..., 'batch_stats': ...} ('batch_stats' only with BatchNorm).
    batch: {'image': float [B, H, W, 3] normalized, 'label': int [B]}.
    rng: the dropout key; needed when `train` (dropout and the aux heads are on).
    train: training mode: dropout, aux heads and BatchNorm on the batch's statistics.
    aux_weight: the weight of each auxiliary head's loss (the paper's 0.3).
    label_smoothing: label smoothing of every cross-entropy term.

  Returns:
    (loss, (terms, batch_stats)): the scalar loss; `classification_loss`'s terms;
    the BatchNorm running statistics updated by this batch in training mode, else
    the given ones ({} without BatchNorm). Its gradient with respect to the
    variables: `jax.grad(model_loss, argnums=1, has_aux=True)`.
  """
  batch_stats = variables.get('batch_stats', {})
  rngs = {'dropout': rng} if rng is not None else {}
  if train and batch_stats:
    output, updated = model.apply(variables, batch['image'], train=True, rngs=rngs,
                                  mutable=['batch_stats'])
    batch_stats = updated['batch_stats']
  else:
    output = model.apply(variables, batch['image'], train=train, rngs=rngs)
  loss, terms = classification_loss(output, batch['label'], aux_weight, label_smoothing)
  return loss, (terms, batch_stats)


def train_step(state: TrainState, batch: Batch, *, aux_weight: float,
               label_smoothing: float = 0.0,
               keep_batch_stats: bool = False) -> tuple[TrainState, Metrics]:
  """One training step on `batch` = {'image': uint8 [B, H, W, 3], 'label': int32 [B]}.

  The pixels are normalized here, on the device, with the state's mean_rgb/std_rgb.

  Args:
    state: the state; its step and base key give this step's dropout key.
    batch: the global batch (under jit, sharded over the mesh's 'data' axis).
    aux_weight: the weight of each auxiliary head's loss (0: left out).
    label_smoothing: label smoothing of every cross-entropy term.
    keep_batch_stats: leave the BatchNorm statistics as they are (a frozen backbone's
      features must stay those of the weights it was loaded with).

  Returns:
    (new_state, metrics): the loss terms, 'top1', 'top5', the 'learning_rate' of
    this step's update, and the global norms 'grad_norm' (this batch's gradient),
    'param_norm' (after the update) and 'update_norm' (0 on steps where gradient
    accumulation applies no update).
  """
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  images = state.model_input(batch['image'])

  def loss_fn(params: Params) -> tuple[Array, tuple[Metrics, Array, Params]]:
    output, batch_stats = _forward_train(state, params, images, dropout_rng)
    loss, terms = classification_loss(output, batch['label'], aux_weight, label_smoothing)
    return loss, (terms, output.logits, batch_stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (terms, logits, batch_stats)), grads = grad_fn(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if keep_batch_stats:
    batch_stats = state.batch_stats
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=_updated_ema(state, params))
  grad_norm, param_norm, update_norm = optim.global_norms(grads, params, updates)
  metrics = {
      **terms,
      'top1': metrics_lib.top_k_correct(logits, batch['label'], 1).mean(),
      'top5': metrics_lib.top_k_correct(logits, batch['label'], metrics_lib.TOP_K).mean(),
      'learning_rate': jnp.asarray(
          state.learning_rate_fn(state.step // state.grad_accum_steps), jnp.float32),
      'grad_norm': grad_norm,
      'param_norm': param_norm,
      'update_norm': update_norm,
  }
  return new_state, metrics


def _forward_train(state: TrainState, params: Params, images: Array,
                   dropout_rng: Array) -> tuple[googlenet.ModelOutput, Params]:
  """The training-mode forward pass; returns the output and the new batch_stats."""
  variables = googlenet.model_variables(params, state.batch_stats)
  rngs = {'dropout': dropout_rng}
  if 'batch_stats' not in variables:
    return state.apply_fn(variables, images, train=True, rngs=rngs), state.batch_stats
  output, updated = state.apply_fn(variables, images, train=True, rngs=rngs,
                                   mutable=['batch_stats'])
  return output, updated['batch_stats']


def _updated_ema(state: TrainState, params: Params) -> Params | None:
  """The EMA after this step: advanced on steps that update params, else unchanged."""
  if state.ema_params is None:
    return None
  updates_params = (state.step + 1) % state.grad_accum_steps == 0
  decay = jnp.where(updates_params, state.ema_decay, 1.0)
  return optim.ema_update(state.ema_params, params, decay)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh,
                    state_sharding: TrainState,
                    compiler_options: Mapping[str, Any] | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """`train_step` jit-compiled for `mesh`: batch split over 'data', state replicated.

  The input state is donated (its buffers are reused for the new state); the
  metrics come back replicated. `compiler_options` are passed to XLA (those it
  knows, `xla_options.supported`); None means `xla_options.for_model` of the
  mesh's platform and config.dtype (`{}`: XLA's own defaults;
  `xla_options.FAST_COMPILE` cuts compile time for slower steps).

  Raises:
    ValueError: if config.batch_size does not divide by the number of devices.
  """
  sharding.check_batch_divisible(config.batch_size, mesh)
  step = _bound_train_step(config.aux_weight, config.label_smoothing, config.freeze_backbone)
  return jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0,
                 compiler_options=_compiler_options(mesh, compiler_options, config.dtype))


@functools.lru_cache(maxsize=None)
def _bound_train_step(aux_weight: float, label_smoothing: float,
                      keep_batch_stats: bool) -> Callable[..., Any]:
  """`train_step` with these loss settings, one function object per setting.

  JAX keys its traces and compiled programs on the function: with the same object,
  a step built again (a notebook cell run again) reuses the program compiled for
  the first instead of tracing and compiling it again.
  """
  return functools.partial(train_step, aux_weight=aux_weight, label_smoothing=label_smoothing,
                           keep_batch_stats=keep_batch_stats)


def eval_step(state: TrainState, batch: Batch) -> Metrics:
  """Summable evaluation counts over the masked-in examples of `batch`.

  Uses the EMA parameters when there are any, in evaluation mode (no dropout,
  no aux heads). `batch['image']` is uint8 [B, H, W, 3], or [B, crops, H, W, 3], in
  which case the softmax probabilities are averaged over the crops of each
  example. `batch['mask']` [B] is 1 for real examples and 0 for padding.

  Returns:
    'correct_top1', 'correct_top5', 'loss_sum' (cross-entropy of the predicted
    distribution, no label smoothing) and 'count', each summed over the batch.
  """
  predicted = metrics_lib.log_probs(state.apply_fn, state.eval_variables(),
                                    state.model_input(batch['image']))
  labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
  nll = -jnp.take_along_axis(predicted, labels[:, None], axis=-1)[:, 0]
  return {
      'correct_top1': jnp.sum(mask * metrics_lib.top_k_correct(predicted, labels, 1)),
      'correct_top5': jnp.sum(mask * metrics_lib.top_k_correct(predicted, labels,
                                                               metrics_lib.TOP_K)),
      'loss_sum': jnp.sum(jnp.where(mask > 0, nll, 0.0)),
      'count': jnp.sum(mask),
  }


def make_eval_step(mesh: Mesh, state_sharding: TrainState,
                   compiler_options: Mapping[str, Any] | None = None,
                   dtype: str = googlenet.AUTO_DTYPE) -> Callable[[TrainState, Batch], Metrics]:
  """`eval_step` jit-compiled for `mesh`: batch split over 'data', counts replicated.

  `compiler_options` as in `make_train_step`, with `dtype` the model's compute dtype
  (a config.dtype name).
  """
  return jax.jit(eval_step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh),
                 compiler_options=_compiler_options(mesh, compiler_options, dtype))


def _compiler_options(mesh: Mesh, options: Mapping[str, Any] | None,
                      dtype: str) -> Mapping[str, Any]:
  platform = mesh.devices.flat[0].platform
  if options is None:
    return xla_options.for_model(platform,
                                 googlenet.DTYPES[googlenet.resolve_dtype(dtype, platform)])
  return xla_options.supported(options, platform)


def _watched(metrics: Mapping[str, Any]) -> list[str]:
  """The metrics that must stay finite: the losses ('loss' first) and the norms."""
  return [name for _, name in sorted((name != 'loss', name) for name in metrics
                                     if name.endswith('loss') or name.endswith('_norm'))]


def track_nonfinite(first: Metrics | None, metrics: Metrics, step: Array | int) -> Metrics:
  """The record of the first step whose watched metrics were not all finite.

  `first` is the record so far (None before the first step); its 'step' stays 0
  until a step's losses or norms hold a NaN or infinity, then keeps that step and
  its values. Pure and cheap, so the loop runs it on the device after every step
  without waiting for the step to finish.
  """
  values = {name: metrics[name] for name in _watched(metrics)}
  if first is None:
    first = {'step': jnp.zeros((), jnp.int32), **{k: jnp.zeros_like(v) for k, v in values.items()}}
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values.values()]))
  take = jnp.logical_and(jnp.logical_not(finite), first['step'] == 0)
  return {'step': jnp.where(take, jnp.asarray(step, jnp.int32), first['step']),
          **{k: jnp.where(take, v, first[k]) for k, v in values.items()}}


def make_nonfinite_tracker(mesh: Mesh) -> Callable[[Metrics | None, Metrics, int], Metrics]:
  """`track_nonfinite` jit-compiled for `mesh`, its record replicated."""
  return jax.jit(track_nonfinite, out_shardings=sharding.replicated(mesh))


def check_finite(first: Mapping[str, Any]) -> None:
  """Raises NonFiniteError if the fetched record of `track_nonfinite` names a step.

  Called on the host before each log line and each save, so a diverged state is
  never saved, and the step named is the one where a NaN or infinity appeared.
  """
  step = int(first['step'])
  if step:
    values = '; '.join(f'{name} is {float(first[name])}' for name in _watched(first))
    raise errors.NonFiniteError(
        f'step {step}: {values}; training stopped without saving a non-finite state. '
        'Lower learning_rate, set grad_clip_norm, or check the input data for NaN/Inf.')
