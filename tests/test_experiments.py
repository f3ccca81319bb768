"""Tests of the experiment scripts' own arithmetic (their training runs are the scripts')."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablations
from experiments import cpu_profile
from experiments import crops_ensembles
from experiments import startup_phases
from inception_jax import benchmark, sharding, xla_options
from inception_jax.model import googlenet
from inception_jax.training import steps


def _field(config, dotted_key: str):
  return functools.reduce(lambda node, part: node[part], dotted_key.split('.'), config)


def test_ensemble_sizes_are_odd_and_end_with_all_models():
  assert crops_ensembles.ensemble_sizes(1) == [1]
  assert crops_ensembles.ensemble_sizes(4) == [1, 3, 4]
  assert crops_ensembles.ensemble_sizes(5) == [1, 3, 5]


def test_table_errors_match_hand_counts():
  labels = np.array([0, 1, 1, 0])
  # Model A is right on examples 0-2 (error 25 %), model B on 0 and 3 (error 50 %);
  # their softmax average is right on 0, 1 (0.55 vs 0.45) and 3 (0.6): error 25 %.
  model_a = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.4, 0.6]])
  model_b = np.array([[0.8, 0.2], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])
  probs = {crops: [model_a, model_b] for crops in (1, 10, 144)}
  rows = crops_ensembles.table(probs, labels)
  single_1_crop, ensemble_10_crops = rows[2], rows[2 + 3 + 1]
  assert single_1_crop.startswith('| 1 | 1 | 1 | 37.50 ± 12.50 % | +0.00 |')
  assert ensemble_10_crops.startswith('| 2 | 10 | 20 | 25.00 % | -12.50 |')
  nll = -np.mean(np.log([0.85, 0.55, 0.35, 0.6]))
  assert ensemble_10_crops.endswith(f'| {nll:.4f} |')


def test_ablation_variants_change_only_their_fields():
  base = ablations.variant_config({}, seed=3, epochs=2.0, width=0.25, data_dir='')
  assert (base.model, base.seed, base.num_epochs, base.model_options.width) == (
      'googlenet', 3, 2.0, 0.25)
  for name, changes in ablations.VARIANTS.items():
    config = ablations.variant_config(changes, seed=3, epochs=2.0, width=0.25, data_dir='')
    differing = {key for key in changes if _field(config, key) != _field(base, key)}
    assert differing == set(changes), name
    assert config.seed == 3 and config.num_epochs == 2.0


@pytest.mark.parametrize('models', [0, -1])
def test_crops_ensembles_refuses_no_models(models, monkeypatch, capsys):
  """The script's own refusal, not some other usage error (argparse exits 2 for both)."""
  monkeypatch.setattr('sys.argv', ['crops_ensembles', '--models', str(models)])
  with pytest.raises(SystemExit) as exit_info:
    crops_ensembles.main()
  assert exit_info.value.code == 2
  assert f'error: --models must be at least 1, got {models}.' in capsys.readouterr().err


_HLO = '''HloModule jit_train_step

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%fused_reduce (p: f32[8,4,4,16]) -> f32[16] {
  %p = f32[8,4,4,16] parameter(0)
  %zero = f32[] constant(0)
  ROOT %r = f32[16] reduce(%p, %zero), dimensions={0,1,2}, to_apply=%add
}

%fused_transpose (p: f32[8,4,4,16]) -> f32[4,4,8,16] {
  %p = f32[8,4,4,16] parameter(0)
  %two = f32[] constant(2)
  %twos = f32[8,4,4,16] broadcast(%two), dimensions={}
  %m = f32[8,4,4,16] multiply(%p, %twos)
  ROOT %t = f32[4,4,8,16] transpose(%m), dimensions={1,2,0,3}
}

ENTRY %main (x: f32[8,4,4,16], k: f32[3,3,16,32], g: f32[8,4,4,32]) -> f32[16] {
  %x = f32[8,4,4,16] parameter(0)
  %k = f32[3,3,16,32] parameter(1)
  %g = f32[8,4,4,32] parameter(2)
  %fwd = f32[8,4,4,32] convolution(%x, %k), metadata={op_name="jvp(GoogLeNet)/3x3/conv"}
  %dx = f32[8,4,4,16] convolution(%g, %k), metadata={op_name="transpose(jvp(GoogLeNet))/3x3/conv"}
  %dk = f32[32,3,3,16] convolution(%g, %x), dim_labels=f01b_i01o->f01b
  %copy.1 = f32[3,3,16,32] copy(%k)
  %layout = f32[4,4,8,16] fusion(%x), calls=%fused_transpose
  %stats = (f32[16], f32[16]) fusion(%x), calls=%fused_reduce, metadata={op_name="GoogLeNet/bn/s"}
  %bn = f32[16] fusion(%x), calls=%fused_reduce, metadata={op_name="GoogLeNet/x.activate/bn"}
  ROOT %norm = f32[16] fusion(%x), calls=%fused_reduce, metadata={op_name="reduce"}
}
'''


def test_profile_sorts_kernels_into_categories_by_name_and_shape():
  kernel_shapes = cpu_profile.kernel_shapes({'3x3': {'kernel': np.zeros((3, 3, 16, 32))}})
  assert cpu_profile.hlo_categories(_HLO, kernel_shapes) == {
      'fwd': 'conv/matmul forward', 'dx': 'conv/matmul input gradient',
      'dk': 'conv/matmul weight gradient', 'copy.1': 'concatenations and copies',
      'layout': 'concatenations and copies',
      'stats': 'BatchNorm + ReLU', 'bn': 'BatchNorm + ReLU',
      'norm': 'optimizer update and norms'}


def test_profile_table_lists_each_categorys_longest_kernels_averaged_over_rounds():
  report = dict(
      case='c', compile_phases={'trace': 1.0}, fusions=2, kernels={'pools': 2},
      categories={'a': 'pools', 'b': 'pools'},
      descriptions={'a': 'f32[8], GoogLeNet/pool', 'b': 'f32[4], GoogLeNet/pool'},
      results={'jax': [({'pools': 3.0, 'kernel: a': 2.0, 'kernel: b': 1.0}, 3.5),
                       ({'pools': 5.0, 'kernel: a': 4.0, 'kernel: b': 1.0}, 5.5)],
               'torch': [({'pools': 1.0}, 1.0), ({'pools': 1.0}, 1.0)]})
  assert '| pools | 4 (3–5) | 1 (1–1) |' in cpu_profile.format_case(report)
  assert 'longest kernels' not in cpu_profile.format_case(report)
  lines = cpu_profile.format_case(report, top=1).splitlines()
  assert lines[-1] == '* 3.0 ms: a (f32[8], GoogLeNet/pool)'


def test_startup_phases_refuse_an_inference_case(monkeypatch, capsys):
  monkeypatch.setattr('sys.argv', ['startup_phases', '--case', 'infer:1:32'])
  with pytest.raises(SystemExit) as exit_info:
    startup_phases.main()
  assert exit_info.value.code == 2
  assert "a training step's; write train:BATCH:SIZE." in capsys.readouterr().err


def test_startup_parts_compile_the_gradient_and_an_update_kernel_per_parameter():
  (case,) = benchmark.parse_cases('train:2:32', ['googlenet_bn_shallow'], ['float32'])
  model = googlenet.create_model(case.model, ops='fast')
  config = benchmark._train_config(case)  # pylint: disable=protected-access
  mesh = sharding.create_mesh(jax.devices()[:1])
  state, _ = steps.create_train_state(config, model, (1, 32, 32, 3), mesh, 10)
  batch = {'image': jnp.zeros((2, 32, 32, 3), jnp.uint8), 'label': jnp.zeros(2, jnp.int32)}
  result = startup_phases.parts(model, state, batch, config.aux_weight,
                                xla_options.fast_compile())
  # Every parameter's new value is an output of its own: at least one kernel each.
  assert result['update_and_norms_kernels'] >= len(jax.tree.leaves(state.params))
  assert result['gradient_kernels'] > 0
  assert result['gradient_compile_s'] > 0 and result['update_and_norms_compile_s'] > 0
