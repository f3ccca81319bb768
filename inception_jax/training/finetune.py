"""Starting from another run's weights: everything but the classifiers, or refuse.

The classifiers (`classifier`, `aux1/classifier`, `aux2/classifier`) are the
layers whose shape depends on the number of classes; when it differs they keep
their fresh initialization. Any other mismatch (a missing layer, another shape)
is an error unless its path matches `config.init_from_reinit` (a regular
expression), which lets those layers keep their fresh values too.
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from inception_jax import errors
from inception_jax.model import googlenet
from inception_jax.training import checkpointing

CLASSIFIER_PATTERN = r'^(aux\d+/)?classifier/'


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
