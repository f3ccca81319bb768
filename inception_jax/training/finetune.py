"""Starting from another run's weights: everything but the classifiers, or refuse.

The classifiers (`classifier`, `aux1/classifier`, `aux2/classifier`) are the
layers whose shape depends on the number of classes; when it differs they keep
their fresh initialization. Any other mismatch (a missing layer, another shape)
is an error unless its path matches `config.init_from_reinit` (a regular
expression), which lets those layers keep their fresh values too.

The run also takes the source run's architecture and preprocessing
(`INHERITED`, from its config.json) unless the command line sets them: weights
only fit the model they were trained as, and expect the inputs they were trained on.
"""

import copy
import re
from typing import Any, Collection

import jax
import jax.numpy as jnp
import ml_collections

from inception_jax import errors
from inception_jax.model import googlenet
from inception_jax.training import checkpointing
from inception_jax.training import rundir

CLASSIFIER_PATTERN = r'^(aux\d+/)?classifier/'
ARCHITECTURE = ('model', 'model_options.width', 'model_options.aux_heads', 'model_options.lrn',
                'model_options.naive_blocks')
PREPROCESSING = ('image_size', 'mean_rgb', 'std_rgb', 'eval_resize_ratio')
INHERITED = ARCHITECTURE + PREPROCESSING


def _field(config: ml_collections.ConfigDict, name: str) -> Any:
  """The value of a dotted field name; lists (as config.json stores tuples) as tuples."""
  for part in name.split('.'):
    config = config[part]
  return tuple(config) if isinstance(config, list) else config


def _set_field(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
  *parents, last = name.split('.')
  for part in parents:
    config = config[part]
  config[last] = value


def inherit_source(config: ml_collections.ConfigDict, explicit: Collection[str]
                   ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """`config` with the `INHERITED` fields of `config.init_from`'s run, except `explicit` ones.

  Returns the new config and the fields it took, {name: value}, where they differed.
  `explicit`: the fields the user set on the command line (`config.override_fields`).
  Raises ConfigError, naming them, when explicit fields make a model the source's
  weights do not fit.
  """
  source = rundir.load_config(rundir.workdir_of(config.init_from))
  config = copy.deepcopy(config)
  taken = {}
  for name in INHERITED:
    value = _field(source, name)
    if name not in explicit and value != _field(config, name):
      _set_field(config, name, value)
      taken[name] = value
  forced = [name for name in ARCHITECTURE
            if name in explicit and _field(config, name) != _field(source, name)]
  if forced and not _weights_fit(config, source):
    raise errors.ConfigError(
        f"the weights of init_from {config.init_from} do not fit the model that "
        + ', '.join(f'--config.{name}={_field(config, name)} (source: '
                    f'{_shown(_field(source, name))})' for name in forced)
        + ' makes; leave those fields out to take the source\'s.')
  return config, taken


def _shown(value: Any) -> Any:
  return 'the model default' if value is None else value


def _weights_fit(config: ml_collections.ConfigDict, source: ml_collections.ConfigDict) -> bool:
  """Whether every array of `config`'s model outside the classifiers has a source array."""
  def shapes(run_config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    model = rundir.build_model(run_config, 2)
    size = run_config.image_size
    tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))
    return {path: tuple(leaf.shape) for path, leaf in googlenet.named_leaves(tree).items()}
  allowed = re.compile('|'.join(p for p in (CLASSIFIER_PATTERN, config.init_from_reinit) if p))
  mine, theirs = shapes(config), shapes(source)
  return all(theirs.get(path) == shape for path, shape in mine.items()
             if not allowed.search(path.split('/', 1)[1]))


def merge_pretrained(fresh: Any, pretrained: Any,
                     reinit_pattern: str = '') -> tuple[Any, list[str]]:
  """`fresh` with every leaf replaced by `pretrained`'s, except classifier mismatches.

  Returns the merged tree and the paths that kept their fresh values.
  Raises ValueError naming every other leaf that is missing or has another shape.
  """
  allowed = re.compile('|'.join(p for p in (CLASSIFIER_PATTERN, reinit_pattern) if p))
  fresh_flat, pretrained_flat = googlenet.named_leaves(fresh), googlenet.named_leaves(pretrained)
  merged, kept_fresh, refused = {}, [], []
  for path, value in fresh_flat.items():
    source = pretrained_flat.get(path)
    if source is not None and tuple(source.shape) == tuple(value.shape):
      merged[path] = jnp.asarray(source, value.dtype)
      continue
    if allowed.search(path):
      merged[path] = value
      kept_fresh.append(path)
      continue
    refused.append(f'{path}: model {tuple(value.shape)}, checkpoint '
                   f'{"missing" if source is None else tuple(source.shape)}')
  if refused:
    raise errors.UserError(
        'the checkpoint does not fit this model outside the classifiers:\n  '
        + '\n  '.join(refused) + '\nAllow fresh values for such layers with '
        "--config.init_from_reinit='<regex of paths>'.")
  return googlenet.from_named_leaves(merged), kept_fresh


def init_from_checkpoint(state: Any, path: str, config: ml_collections.ConfigDict) -> Any:
  """The fresh train `state` with weights (and BN statistics) loaded from `path`."""
  source = checkpointing.load_raw(path).state
  params, kept = merge_pretrained(state.params, source['params'], config.init_from_reinit)
  replace = {'params': jax.device_put(params, jax.tree.map(lambda x: x.sharding, state.params))}
  if state.batch_stats:
    stats, _ = merge_pretrained(state.batch_stats, source.get('batch_stats', {}),
                                config.init_from_reinit)
    replace['batch_stats'] = jax.device_put(
        stats, jax.tree.map(lambda x: x.sharding, state.batch_stats))
  if state.ema_params is not None:  # a copy: the step donates both trees
    replace['ema_params'] = jax.tree.map(jnp.copy, replace['params'])
  if kept:
    print(f'init_from {path}: re-initialized {len(kept)} arrays ({", ".join(sorted(kept))})')
  return state.replace(**replace)


def classifier_mask(params: Any) -> Any:
  """True for the classifier layers only: the trainable mask of a frozen backbone."""
  pattern = re.compile(CLASSIFIER_PATTERN)
  return googlenet.from_named_leaves(
      {path: bool(pattern.search(path)) for path in googlenet.named_leaves(params)})
