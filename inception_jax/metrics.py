"""What a classifier's outputs score: crop-averaged log-probabilities and top-k correctness.

Pure functions of arrays, shared by the evaluation step, `evaluate` and `predict`.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

TOP_K = 5


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per example, whether the label is among the k highest logits (k capped at classes)."""
  _, top = jax.lax.top_k(logits, min(k, logits.shape[-1]))
  return jnp.any(top == labels[:, None], axis=-1)


def log_probs(apply_fn: Callable[..., Any], variables: Any, images: jax.Array) -> jax.Array:
  """[B, classes] log-probabilities in eval mode; images [B, H, W, 3] or [B, crops, H, W, 3].

  With crops, the softmax probabilities of an image's crops are averaged.
  """
  crops = images.shape[1] if images.ndim == 5 else 1
  flat = images.reshape(-1, *images.shape[-3:])
  logits = apply_fn(variables, flat, train=False).logits
  per_crop = jax.nn.log_softmax(logits).reshape(images.shape[0], crops, -1)
  return jax.nn.logsumexp(per_crop, axis=1) - jnp.log(crops)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Top-1, top-5 (top-k for fewer classes) accuracy and mean negative log-likelihood."""
  nll = -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))
  return {'top1': float(np.mean(top_k_correct(probs, labels, 1))),
          'top5': float(np.mean(top_k_correct(probs, labels, TOP_K))),
          'loss': float(np.mean(nll)), 'count': int(len(labels))}
