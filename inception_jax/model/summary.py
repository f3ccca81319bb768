"""A Table-1-style summary computed from the model itself.

Shapes come from `jax.eval_shape` (no compute). Multiply-adds are counted from
the model's convolutions and dense layers as they are called: a convolution
costs out_height · out_width · out_channels · kernel_h · kernel_w · in_channels
(/ groups) per image, a dense layer in · out; pools, LRN, BatchNorm, ReLU and
biases are not counted (Table 1 counts the same way).
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LayerRow:
  """One top-level layer or block of the network, per image."""
  name: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  macs: int


def _macs(module: nn.Module, inputs: jax.ShapeDtypeStruct, output: Any) -> int:
  if isinstance(module, nn.Conv):
    groups = module.feature_group_count
    return math.prod(output.shape[1:]) * math.prod(module.kernel_size) * (
        inputs.shape[-1] // groups)
  if isinstance(module, nn.Dense):
    return math.prod(output.shape[1:]) * inputs.shape[-1]
  return 0


def _count_params(tree: Any) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class Call:
  """One module call seen while tracing: where it sits, what it made, what it cost."""
  path: tuple[str, ...]
  kind: str
  output_shape: tuple[int, ...]
  macs: int


def trace_calls(module: nn.Module, input_shape: Sequence[int],
                **call_kwargs: Any) -> tuple[list[Call], Any]:
  """Initializes `module` abstractly on zeros of `input_shape`, recording every call.

  Returns the calls in order (shapes without the batch axis, multiply-adds per
  example) and the abstract variables. Nothing is computed. Modules with a kernel
  set are traced with XLA's ('xla'), whose convolutions are called one by one (the
  fast set fuses some into one matrix product of the same arithmetic).
  """
  if hasattr(module, 'ops'):
    module = module.clone(ops='xla')
  calls: list[Call] = []

  def record(next_fun, args, kwargs, context):
    output = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and module.scope is not None:
      calls.append(Call(path=tuple(module.scope.path), kind=type(module).__name__,
                        output_shape=tuple(getattr(output, 'shape', ())[1:]),
                        macs=_macs(module, args[0], output)))
    return output

  inputs = jnp.zeros(tuple(input_shape), jnp.float32)
  with nn.intercept_methods(record):
    variables = jax.eval_shape(
        lambda x: module.init({'params': jax.random.key(0)}, x, **call_kwargs), inputs)
  return calls, variables


def layer_table(model: nn.Module, image_size: int | Sequence[int]) -> list[LayerRow]:
  """Per top-level layer: output shape, parameters and multiply-adds for one image.

  Auxiliary heads are included as rows (kind 'aux head'); `totals` separates them.
  """
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  calls, variables = trace_calls(model, (1, height, width, 3), train=False)
  params = variables['params']
  rows = []
  for top in (c for c in calls if len(c.path) == 1):
    name = top.path[0]
    rows.append(LayerRow(
        name=name, kind='aux head' if name.startswith('aux') else top.kind,
        output_shape=top.output_shape, params=_count_params(params.get(name, {})),
        macs=sum(c.macs for c in calls if c.path[:1] == top.path)))
  return rows


def totals(rows: Sequence[LayerRow]) -> dict[str, int]:
  """Parameters and multiply-adds with and without the auxiliary heads."""
  main = [r for r in rows if r.kind != 'aux head']
  return {'params': sum(r.params for r in main), 'macs': sum(r.macs for r in main),
          'params_with_aux': sum(r.params for r in rows),
          'macs_with_aux': sum(r.macs for r in rows)}


def format_table(rows: Sequence[LayerRow]) -> str:
  """Renders the rows and totals as a Markdown table."""
  lines = ['| layer | type | output | params | multiply-adds |', '|---|---|---|---:|---:|']
  for r in rows:
    shape = 'x'.join(str(d) for d in r.output_shape)
    lines.append(f'| {r.name} | {r.kind} | {shape} | {r.params:,} | {r.macs / 1e6:,.1f}M |')
  t = totals(rows)
  lines.append(f"| **total (no aux)** | | | {t['params']:,} | {t['macs'] / 1e6:,.1f}M |")
  lines.append(f"| **total (with aux)** | | | {t['params_with_aux']:,} | "
               f"{t['macs_with_aux'] / 1e6:,.1f}M |")
  return '\n'.join(lines)
