"""Each lowering of an exported artifact computes as its own platform defaults to, not as the
machine that exported it does (this one is a CPU)."""

import re

import pytest

from inception_jax.configs import default
from inception_jax.model import googlenet
from inception_jax.serving import evaluation
from inception_jax.serving import export
from helpers import random_variables

IMAGE_SIZE = 32


def _loaded(dtype: str, ops: str | None) -> evaluation.LoadedModel:
  """A googlenet_tiny run, in memory, with the given config dtype and kernel set."""
  config = default.get_config()
  config.model, config.dtype, config.image_size = 'googlenet_tiny', dtype, IMAGE_SIZE
  model = googlenet.create_model('googlenet_tiny', num_classes=3, ops=ops)
  return evaluation.LoadedModel(path='memory', step=0, model=model, config=config, meta={},
                                variables=random_variables(model, IMAGE_SIZE))


def test_gpu_and_tpu_lowerings_use_xla_kernels_and_bfloat16_when_the_run_says_auto():
  loaded = _loaded('auto', None)
  cpu = export.export_model(loaded, platforms=('cpu',)).mlir_module()
  accelerators = export.export_model(loaded, platforms=('cuda', 'tpu')).mlir_module()
  # The fast set computes 1x1 convolutions as products (dot_general); with XLA's
  # kernels the evaluation pass's only product is the classifier's, [b, 3] in bfloat16.
  assert _product_shapes(accelerators) == {'?x3xbf16'}
  assert len(_product_shapes(cpu)) > 5 and 'bf16' not in cpu
  assert accelerators.count('stablehlo.convolution') > cpu.count('stablehlo.convolution')


def _product_shapes(module_text: str) -> set[str]:
  """The result types of the module's dot_general ops, e.g. '?x3xbf16'."""
  return set(re.findall(r'stablehlo\.dot_general .*-> tensor<([^>]*)>', module_text))


@pytest.mark.parametrize('dtype,ops,want_dtype,want_ops', [
    ('auto', None, {'cpu': 'float32', 'cuda': 'bfloat16', 'tpu': 'bfloat16'},
     {'cpu': 'fast', 'cuda': 'xla', 'tpu': 'xla'}),
    ('float32', 'fast', dict.fromkeys(export.PLATFORMS, 'float32'),
     dict.fromkeys(export.PLATFORMS, 'fast')),
])
def test_sidecar_names_each_platforms_compute_dtype(dtype, ops, want_dtype, want_ops):
  """'auto' is float32 and the fast set on CPU, bfloat16 and XLA's kernels elsewhere
  (docs/architecture.md); a dtype or kernel set the run names holds everywhere."""
  loaded = _loaded(dtype, ops)
  assert {p: m.ops for p, m in export.platform_models(loaded).items()} == want_ops
  exported = export.export_model(loaded, 'float')
  assert export.sidecar(loaded, exported, 'float', ('a', 'b', 'c'))['compute_dtype'] == want_dtype
