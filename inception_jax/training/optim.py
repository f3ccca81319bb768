"""Optimizer recipes: learning-rate schedules and optax transformations from the config.

Recipes (`config.recipe`):
  * ``'paper'``: SGD with momentum (0.9), the learning rate lowered by 4 % every 8
    epochs as a staircase, lr * lr_decay_factor ** floor(epoch / lr_decay_epochs);
    Polyak averaging of the parameters (`config.ema_decay`, see `ema_update`) gives
    the parameters used for evaluation.
  * ``'caffe_quick'``: bvlc_googlenet's quick_solver.prototxt: SGD with momentum,
    "poly" decay lr * (1 - step / total) ** poly_power to 0 at the end, and the
    network's lr_mult 2 for the biases of convolutions and dense layers. The config
    defaults (learning_rate 0.01, momentum 0.9, weight_decay 2e-4, poly_power 0.5)
    are the solver's.
  * ``'modern'``: linear warm-up then cosine decay to 0, with SGD (optionally
    Nesterov) or AdamW per `config.optimizer`; label smoothing is the loss's
    (`config.label_smoothing`).

Every recipe honours `config.warmup_epochs` (a linear ramp from 0; the decay then
runs over the remaining steps), weight decay on kernels only (`weight_decay_mask`),
global-norm clipping (`config.grad_clip_norm` > 0) and gradient accumulation.

Weight decay is a gradient transformation, not a loss term: with SGD,
`optax.add_decayed_weights` before momentum is exactly Caffe's and torch's L2
weight decay; with AdamW it is AdamW's decoupled decay.

Counting steps. `steps_per_epoch` counts training steps: batches of
`config.batch_size`, one call of the train step each; `config.num_train_steps`
counts them too. With `config.grad_accum_steps` = k > 1, `optax.MultiSteps`
averages the gradients of k consecutive steps and applies one update, so the
effective batch is k * batch_size and an epoch has steps_per_epoch / k updates.
Schedules are functions of the number of updates applied, which is what the
transformations inside MultiSteps count; every quantity given in epochs is
converted to updates once, in `create_learning_rate_schedule` (rounded to whole
updates). The learning rate in force at training step s is schedule(s // k).
"""

from typing import Any, Callable

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import optax

from inception_jax import errors

Params = Any
TrainableMask = Params | Callable[[Params], Params]

RECIPES = ('paper', 'caffe_quick', 'modern')
OPTIMIZERS = ('sgd', 'adamw')
CAFFE_BIAS_LR_MULT = 2.0  # bvlc_googlenet's `param { lr_mult: 2 }` on every bias


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Training steps of the run: `num_train_steps` if > 0, else num_epochs epochs."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  steps = round(config.num_epochs * steps_per_epoch)
  if steps <= 0:
    raise errors.ConfigError(
        f'num_epochs={config.num_epochs} with {steps_per_epoch} steps per epoch '
        'gives no training steps; set num_epochs or num_train_steps > 0.')
  return steps


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.Schedule:
  """The recipe's learning rate as a function of the number of optimizer updates.

  Args:
    config: the experiment configuration (recipe, learning_rate, warmup_epochs, ...).
    steps_per_epoch: training steps (batches of config.batch_size) per epoch.

  Returns:
    schedule(update) -> learning rate. With grad_accum_steps = k, training step s
    uses schedule(s // k) (see the module docstring).
  """
  _check_config(config)
  if steps_per_epoch <= 0:
    raise errors.ConfigError(f'steps_per_epoch must be positive, got {steps_per_epoch}.')
  accum = config.grad_accum_steps
  updates_per_epoch = steps_per_epoch / accum
  total_updates = total_train_steps(config, steps_per_epoch) // accum
  warmup_updates = round(config.warmup_epochs * updates_per_epoch)
  if warmup_updates >= total_updates:
    raise errors.ConfigError(
        f'the warm-up ({warmup_updates} updates) must be shorter than the run '
        f'({total_updates} updates); lower warmup_epochs or train longer.')
  decay = _decay_schedule(config, updates_per_epoch, total_updates - warmup_updates)
  if not warmup_updates:
    return decay
  warmup = optax.linear_schedule(0.0, config.learning_rate, warmup_updates)
  return optax.join_schedules([warmup, decay], [warmup_updates])


def _decay_schedule(config: ml_collections.ConfigDict, updates_per_epoch: float,
                    decay_updates: int) -> optax.Schedule:
  """The recipe's schedule after any warm-up, over `decay_updates` updates."""
  if config.recipe == 'paper':
    interval = max(1, round(config.lr_decay_epochs * updates_per_epoch))
    return optax.exponential_decay(config.learning_rate, transition_steps=interval,
                                   decay_rate=config.lr_decay_factor, staircase=True)
  if config.recipe == 'caffe_quick':
    return optax.polynomial_schedule(config.learning_rate, 0.0, config.poly_power,
                                     transition_steps=decay_updates)
  return optax.cosine_decay_schedule(config.learning_rate, decay_steps=decay_updates)


def weight_decay_mask(params: Params) -> Params:
  """True for the leaves that weight decay applies to: kernels (conv, dense).

  Biases and normalization scales and biases get no weight decay.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) == 'kernel', params)


def layer_bias_mask(params: Params) -> Params:
  """True for the biases of layers with a kernel (conv, dense), not of normalizations."""
  with_kernel = {path[:-1] for path, _ in jax.tree_util.tree_leaves_with_path(params)
                 if _leaf_name(path) == 'kernel'}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _leaf_name(path) == 'bias' and path[:-1] in with_kernel, params)


def _leaf_name(path: tuple[Any, ...]) -> str | None:
  return getattr(path[-1], 'key', None) if path else None


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     trainable_mask: TrainableMask | None = None
                     ) -> optax.GradientTransformation:
  """The recipe's optimizer: clipping, weight decay, SGD or AdamW, accumulation.

  Args:
    config: the experiment configuration.
    steps_per_epoch: training steps (batches of config.batch_size) per epoch.
    trainable_mask: None to train every parameter; else a params-shaped tree of
      bools, or a function of the params returning one, True where a parameter is
      trained. The others get zero updates and no optimizer state (e.g. a frozen
      backbone when fine-tuning); clipping sees the trained gradients only.

  Returns:
    The transformation; with grad_accum_steps > 1 an `optax.MultiSteps` that
    applies an update every grad_accum_steps calls and zero updates in between.
  """
  schedule = create_learning_rate_schedule(config, steps_per_epoch)
  tx = optax.chain(*_clipping(config), *_optimizer(config, schedule))
  if trainable_mask is not None:
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()},
                               _partition_labels(trainable_mask))
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps).gradient_transformation()
  return tx


def _clipping(config: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
  return [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm > 0 else []


def _optimizer(config: ml_collections.ConfigDict,
               schedule: optax.Schedule) -> list[optax.GradientTransformation]:
  """The update rule, with (masked) weight decay and the recipe's bias lr multiplier."""
  if config.optimizer == 'adamw':
    return [optax.adamw(schedule, weight_decay=config.weight_decay, mask=weight_decay_mask)]
  transforms = []
  if config.weight_decay > 0:
    transforms.append(optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask))
  transforms.append(optax.sgd(schedule, momentum=config.momentum or None,
                              nesterov=config.nesterov))
  if config.recipe == 'caffe_quick':
    transforms.append(optax.masked(optax.scale(CAFFE_BIAS_LR_MULT), layer_bias_mask))
  return transforms


def _partition_labels(trainable_mask: TrainableMask) -> Callable[[Params], Params]:
  """Maps a trainable mask (tree or function) to multi_transform's labels."""
  def labels(params: Params) -> Params:
    mask = trainable_mask(params) if callable(trainable_mask) else trainable_mask
    return jax.tree.map(lambda trained: 'trained' if trained else 'frozen', mask)
  return labels


def ema_update(ema_params: Params, params: Params, decay: float | jax.Array) -> Params:
  """One step of Polyak (exponential moving) averaging: decay * ema + (1 - decay) * params.

  The average starts from the initial parameters, as TensorFlow's
  ExponentialMovingAverage without `num_updates` does.
  """
  return jax.tree.map(lambda ema, p: decay * ema + (1.0 - decay) * p, ema_params, params)


def global_norms(*trees: Params) -> tuple[jax.Array, ...]:
  """The global L2 norm of each of several trees of one structure, e.g. (grads, params, updates).

  The same values as `optax.global_norm` of each tree (float32, to rounding), in
  one reduction per leaf for all the trees: for each leaf, the squares are summed
  over its last axis, then over the rest, both as one variadic reduce. On CPU this
  compiles to far fewer fused loops than `optax.global_norm` of each tree (a square,
  XLA's tree-reduction rewrite into reduce-window + reduce, ...), which makes the
  update faster. Summing each leaf's last axis first keeps the rounding error as
  small as optax's, where a single sequential sum per leaf is far less accurate.
  Measurements: experiments/results/cpu_tuning.md.
  """
  structure = jax.tree.structure(trees[0])
  for tree in trees[1:]:
    if jax.tree.structure(tree) != structure:
      raise ValueError(f'global_norms needs trees of one structure; got {structure} and '
                       f'{jax.tree.structure(tree)}.')
  zeros = (jnp.zeros((), jnp.float32),) * len(trees)

  def add(left: tuple[jax.Array, ...], right: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return tuple(a + b for a, b in zip(left, right))

  def sums_of_squares(*leaves: jax.Array) -> jax.Array:
    squares = tuple(jnp.square(leaf.astype(jnp.float32)).reshape(leaf.shape or (1,))
                    for leaf in leaves)
    rank = squares[0].ndim
    rows = lax.reduce(squares, zeros, add, (rank - 1,))
    return jnp.stack(lax.reduce(rows, zeros, add, tuple(range(rank - 1))))

  per_leaf = [sums_of_squares(*leaves) for leaves in zip(*map(jax.tree.leaves, trees))]
  if not per_leaf:
    return zeros
  return tuple(jnp.sqrt(jnp.sum(jnp.stack(per_leaf), axis=0)))


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a recipe, optimizer or accumulation the recipes do not support."""
  if config.recipe not in RECIPES:
    raise errors.ConfigError(f'unknown recipe {config.recipe!r}; choose one of {RECIPES}.')
  if config.optimizer not in OPTIMIZERS:
    raise errors.ConfigError(
        f'unknown optimizer {config.optimizer!r}; choose one of {OPTIMIZERS}.')
  if config.optimizer != 'sgd' and config.recipe != 'modern':
    raise errors.ConfigError(
        f"recipe {config.recipe!r} uses SGD with momentum; set optimizer='sgd', "
        f"or recipe='modern' to use {config.optimizer!r}.")
  if not isinstance(config.grad_accum_steps, int) or config.grad_accum_steps < 1:
    raise errors.ConfigError(
        f'grad_accum_steps must be an integer >= 1, got '
        f'{config.grad_accum_steps!r}.')
  if not 0.0 <= config.ema_decay < 1.0:
    raise errors.ConfigError(f'ema_decay must be in [0, 1) (0 = off), got {config.ema_decay}.')
