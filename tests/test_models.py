"""The model against the paper's Table 1, hand arithmetic, TensorFlow's LRN and numpy pools."""

import csv
import json
import pathlib
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import cli, xla_options
from inception_jax.model import layers, googlenet, summary

TABLE1 = pathlib.Path(__file__).parent / 'data' / 'paper_table1.csv'


def _table1() -> dict[str, dict[str, str]]:
  with open(TABLE1) as f:
    rows = csv.DictReader(line for line in f if not line.startswith('#'))
    return {r['type']: r for r in rows}


@pytest.fixture(scope='module')
def paper_rows():
  return {r.name: r for r in summary.layer_table(googlenet.create_model('googlenet'), 224)}


@pytest.fixture(scope='module')
def table1():
  return _table1()


def _table_name(row_type: str) -> str:
  return 'inception_' + row_type[len('inception ('):-1]


def test_block_parameter_counts_equal_the_exact_paper_counts(paper_rows, table1):
  assert paper_rows['conv1'].params == 9_472
  assert paper_rows['conv2_reduce'].params + paper_rows['conv2'].params == 114_944
  assert paper_rows['inception_3a'].params == 163_696
  assert paper_rows['inception_4c'].params == 510_104
  assert paper_rows['inception_5b'].params == 1_444_080
  assert paper_rows['classifier'].params == 1_025_000
  for row_type, ref in table1.items():
    if row_type.startswith('inception'):
      assert paper_rows[_table_name(row_type)].params == int(
          ref['exact_params_weights_plus_biases']), row_type


def test_totals_with_and_without_aux_heads(paper_rows):
  totals = summary.totals(list(paper_rows.values()))
  assert totals['params'] == 6_998_552
  assert totals['params_with_aux'] == 13_378_280
  bn = summary.totals(summary.layer_table(googlenet.create_model('googlenet_bn'), 224))
  assert bn['params'] == 6_624_904  # torchvision's googlenet, aux_logits=False
  assert bn['params_with_aux'] == 13_004_888


def test_multiply_adds_match_table1(paper_rows, table1):
  for row_type, ref in table1.items():
    if not row_type.startswith('inception'):
      continue
    macs = paper_rows[_table_name(row_type)].macs
    assert macs == int(ref['exact_macs']), row_type
    paper_ops = float(ref['paper_ops'].rstrip('M')) * 1e6
    assert abs(macs - paper_ops) / paper_ops < 0.06, (row_type, macs, paper_ops)
  # 5a: 51.1M from the model vs the table's 54M (a misprint, like conv1 below).
  assert paper_rows['inception_5a'].macs == 51_079_168
  # conv1: 112*112*64 outputs x 7*7*3 = 118M; the table's 34M is a misprint.
  assert paper_rows['conv1'].macs == 112 * 112 * 64 * 7 * 7 * 3 == 118_013_952
  conv2 = paper_rows['conv2_reduce'].macs + paper_rows['conv2'].macs
  assert conv2 == 56 * 56 * (64 * 64 + 192 * 9 * 64) == 359_661_568  # table: 360M
  total = summary.totals(list(paper_rows.values()))['macs']
  assert total == 1_582_671_872  # 1.583 G


class _Bottleneck(nn.Module):
  """The seeds' example: a 16-channel 1x1 reduction, then 32 5x5 filters."""

  @nn.compact
  def __call__(self, x, train):
    return layers.ConvReLU(32, 5)(layers.ConvReLU(16, 1)(x, train), train)


def test_bottleneck_cost_example_of_the_seeds():
  five_by_five = layers.ConvReLU(32, 5)
  calls, _ = summary.trace_calls(five_by_five, (1, 28, 28, 192), train=False)
  assert sum(c.macs for c in calls) == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400

  calls, _ = summary.trace_calls(_Bottleneck(), (1, 28, 28, 192), train=False)
  assert sum(c.macs for c in calls) == 28 * 28 * (16 * 192 + 32 * 25 * 16) == 12_443_648


def test_naive_block_costs_more_than_the_reduced_block():
  widths = googlenet.INCEPTION_WIDTHS['3a']
  naive_calls, _ = summary.trace_calls(googlenet.InceptionBlock(widths, naive=True),
                                       (1, 28, 28, 192), train=False)
  reduced_calls, _ = summary.trace_calls(googlenet.InceptionBlock(widths), (1, 28, 28, 192),
                                         train=False)
  naive = sum(c.macs for c in naive_calls)
  assert naive == 28 * 28 * 192 * (64 + 128 * 9 + 32 * 25) == 303_464_448
  assert sum(c.macs for c in reduced_calls) == 128_049_152
  # Figure 2(a): the pool branch passes all 192 input channels through.
  assert naive_calls[-1].output_shape == (28, 28, 64 + 128 + 32 + 192)


def test_stage_output_shapes_at_224():
  calls, _ = summary.trace_calls(googlenet.create_model('googlenet'), (1, 224, 224, 3),
                                 train=False)
  shapes = {c.path: c.output_shape for c in calls}
  assert shapes[('conv1',)] == (112, 112, 64)
  assert shapes[('pool1',)] == (56, 56, 64)
  assert shapes[('conv2',)] == (56, 56, 192)
  assert shapes[('pool2',)] == (28, 28, 192)
  expected = dict(zip(('3a', '3b', '4a', '4b', '4c', '4d', '4e', '5a', '5b'),
                      (256, 480, 512, 512, 512, 528, 832, 832, 1024)))
  for block, channels in expected.items():
    side = {'3': 28, '4': 14, '5': 7}[block[0]]
    assert shapes[(f'inception_{block}',)] == (side, side, channels), block
  assert shapes[('pool3',)] == (14, 14, 480)
  assert shapes[('pool4',)] == (7, 7, 832)
  assert shapes[('aux1', 'pool')] == (4, 4, 512)
  assert shapes[('aux2', 'pool')] == (4, 4, 528)
  assert shapes[('avgpool',)] == (1024,)
  assert shapes[('classifier',)] == (1000,)


@pytest.mark.parametrize('size', [31, 57, 100, 223, 225, 299])
def test_odd_and_small_input_sizes_work(size):
  out = jax.eval_shape(lambda x: googlenet.create_model('googlenet').init(
      jax.random.key(0), x, train=False), jnp.zeros((1, size, size, 3)))
  assert out['params']['classifier']['kernel'].shape == (1024, 1000)


def test_too_small_input_fails_clearly():
  with pytest.raises(ValueError, match='at least 31x31'):
    jax.eval_shape(lambda x: googlenet.create_model('googlenet').init(
        jax.random.key(0), x, train=False), jnp.zeros((1, 30, 30, 3)))
  assert googlenet.create_model('googlenet_bn').min_input_size() == 15


@pytest.mark.parametrize('size,window,stride,pad,expected', [
    (112, 3, 2, 0, 56), (56, 3, 2, 0, 28), (28, 3, 2, 0, 14), (14, 3, 2, 0, 7),
    (113, 3, 2, 0, 56), (15, 3, 2, 0, 7), (14, 2, 2, 0, 7), (7, 2, 2, 0, 4),
    (2, 3, 2, 0, 1), (1, 3, 2, 0, 0), (9, 3, 1, 1, 9)])
def test_ceil_mode_output_size(size, window, stride, pad, expected):
  # Caffe: ceil((size + 2 pad - window) / stride) + 1, worked out by hand.
  assert layers.ceil_pool_output_size(size, window, stride, pad) == expected


def _caffe_max_pool(x: np.ndarray, window: int, stride: int, pad: int) -> np.ndarray:
  """Caffe's pooling loop: windows clipped to the image."""
  n, h, w, c = x.shape
  oh = layers.ceil_pool_output_size(h, window, stride, pad)
  ow = layers.ceil_pool_output_size(w, window, stride, pad)
  out = np.zeros((n, oh, ow, c), x.dtype)
  for i in range(oh):
    for j in range(ow):
      h0, w0 = max(i * stride - pad, 0), max(j * stride - pad, 0)
      h1, w1 = min(i * stride - pad + window, h), min(j * stride - pad + window, w)
      out[:, i, j] = x[:, h0:h1, w0:w1].max(axis=(1, 2))
  return out


@pytest.mark.parametrize('shape,window,stride,pad', [
    ((2, 7, 9, 3), 3, 2, 0), ((1, 8, 8, 2), 3, 2, 0), ((1, 5, 6, 2), 3, 1, 1),
    ((1, 7, 7, 2), 2, 2, 0), ((1, 2, 2, 1), 3, 2, 0)])
@pytest.mark.parametrize('ops', ['xla', 'fast'])  # named: 'auto' would test one set only
def test_max_pool_equals_caffe_loop(shape, window, stride, pad, ops):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32) - 5  # all negative-ish
  got = layers.MaxPool(window, stride, pad, ops=ops).apply({}, jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(got), _caffe_max_pool(x, window, stride, pad))


@pytest.mark.parametrize('height,width', [(14, 14), (7, 7), (2, 3), (5, 9), (4, 4), (8, 12), (8, 9)])
def test_adaptive_avg_pool_matches_torch_formula(height, width):
  x = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
  got = np.asarray(layers.AdaptiveAvgPool(4).apply({}, jnp.asarray(x)))
  for i in range(4):
    for j in range(4):
      h0, h1 = (i * height) // 4, -(-((i + 1) * height) // 4)
      w0, w1 = (j * width) // 4, -(-((j + 1) * width) // 4)
      np.testing.assert_allclose(got[:, i, j], x[:, h0:h1, w0:w1].mean(axis=(1, 2)),
                                 rtol=1e-6, atol=1e-6)


def test_lrn_equals_tensorflow_lrn():
  tf = pytest.importorskip('tensorflow')
  x = np.random.default_rng(2).normal(scale=30.0, size=(2, 5, 6, 16)).astype(np.float32)
  got = layers.LocalResponseNorm().apply({}, jnp.asarray(x))
  # Caffe (size 5, alpha 1e-4, beta 0.75, k 1) = TF (radius 2, alpha 1e-4/5, beta, bias 1).
  want = tf.nn.local_response_normalization(x, depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(got), x)  # the scale really matters at this magnitude


def _jit(fn, **kwargs):
  """jax.jit with the fast-compile options: these programs run once or twice on tiny inputs."""
  return jax.jit(fn, compiler_options=xla_options.fast_compile(), **kwargs)


@pytest.fixture(scope='module')
def tiny():
  model = googlenet.create_model('googlenet_tiny', num_classes=7)
  images = jax.random.normal(jax.random.key(0), (4, 35, 35, 3))
  variables = googlenet.init_variables(model, jax.random.key(1), images.shape)
  apply = _jit(model.apply, static_argnames='train')
  return model, variables, images, apply


def test_dropout_follows_the_explicit_key(tiny):
  _, variables, images, apply = tiny
  out_a = apply(variables, images, train=True, rngs={'dropout': jax.random.key(5)})
  out_b = apply(variables, images, train=True, rngs={'dropout': jax.random.key(5)})
  out_c = apply(variables, images, train=True, rngs={'dropout': jax.random.key(6)})
  chex.assert_trees_all_equal(out_a, out_b)
  assert not np.allclose(out_a.logits, out_c.logits)
  for a, c in zip(out_a.aux_logits, out_c.aux_logits):
    assert not np.allclose(a, c)


def test_eval_mode_is_deterministic_without_rngs_and_has_no_aux(tiny):
  _, variables, images, apply = tiny
  first = apply(variables, images, train=False)
  second = apply(variables, images, train=False)
  chex.assert_trees_all_equal(first, second)
  assert first.aux_logits == ()
  train_out = apply(variables, images, train=True, rngs={'dropout': jax.random.key(0)})
  assert type(train_out) is type(first)
  assert len(train_out.aux_logits) == 2
  chex.assert_shape([train_out.logits, *train_out.aux_logits], (4, 7))


def test_aux_heads_off_builds_no_aux_parameters():
  model = googlenet.create_model('googlenet_tiny', aux_heads=False, num_classes=3)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                             jnp.zeros((1, 32, 32, 3)))
  assert not any(name.startswith('aux') for name in variables['params'])


def test_shallow_variant_keeps_four_blocks_at_the_full_models_resolutions():
  """googlenet_bn_shallow: 3a, 4a, 4d and 5b, each with the output the full variant's
  block of that name has (same pools between them), and both aux heads."""
  images = jnp.zeros((2, 64, 64, 3))

  def build(name):
    model = googlenet.create_model(name, num_classes=3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    features = jax.eval_shape(lambda v: googlenet.extract_features(model, v, images), variables)
    return variables, features

  (shallow, shallow_features), (_, full_features) = map(
      build, ('googlenet_bn_shallow', 'googlenet_bn_tiny'))
  assert sorted(shallow_features) == ['conv1', 'conv2', 'inception_3a', 'inception_4a',
                                      'inception_4d', 'inception_5b', 'pooled']
  for name, feature in shallow_features.items():
    assert feature.shape == full_features[name].shape, name
  assert {'aux1', 'aux2'} <= set(shallow['params'])
  for blocks in (('4a', '3a'), ('3a', '6a'), ('3a', '3a'), ()):
    with pytest.raises(ValueError, match=rf"blocks {re.escape(str(blocks))} must be some of"):
      googlenet.create_model('googlenet_bn_tiny', blocks=blocks).init(
          jax.random.key(0), images, train=False)


def test_caffe_initialization(tiny):
  _, variables, _, _ = tiny
  conv = variables['params']['inception_3a']['5x5']['conv']
  bound = np.sqrt(3 / (5 * 5 * conv['kernel'].shape[2]))  # xavier: uniform ±sqrt(3/fan_in)
  assert 0.9 * bound < np.abs(conv['kernel']).max() <= bound  # 200 draws reach near the bound
  np.testing.assert_array_equal(conv['bias'], np.float32(0.2))
  np.testing.assert_array_equal(variables['params']['classifier']['bias'], 0.0)
  np.testing.assert_array_equal(variables['params']['aux1']['classifier']['bias'], 0.0)
  np.testing.assert_array_equal(variables['params']['aux1']['fc']['bias'], np.float32(0.2))


def test_features_are_the_stage_outputs(tiny):
  model, variables, images, apply = tiny
  features = _jit(lambda v, x: googlenet.extract_features(model, v, x))(variables, images)
  assert features['pooled'].shape == (4, 128)  # 1024 channels / 8
  assert features['inception_5b'].shape[-1] == 128
  assert features['inception_3a'].shape == (4, 4, 4, 32)  # 35 → 18 → 9 → 4
  logits = features['pooled'] @ variables['params']['classifier']['kernel'] + variables[
      'params']['classifier']['bias']
  np.testing.assert_allclose(apply(variables, images, train=False).logits, logits,
                             rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  """Convolutions, matrix products and activations in bfloat16; parameters and logits float32.

  Close logits alone would pass with `dtype` ignored, so the program's products and
  the stage outputs must be bfloat16 and the logits must move off float32's.
  """
  _, variables, images, apply = tiny
  bf16 = googlenet.create_model('googlenet_tiny', num_classes=7, dtype='bfloat16')
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), images, train=False))
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  lowered = _jit(lambda v, x: bf16.apply(v, x, train=False, mutable=['intermediates'])).lower(
      variables, images)
  products = [line.rsplit(' : ', 1)[-1] for line in lowered.as_text().splitlines()
              if re.search(r'stablehlo\.(convolution|dot_general) ', line)]
  assert len(products) > 20  # a convolution or product per conv layer at least
  for signature in products:  # (operand types) -> result type, all bfloat16
    assert set(re.findall(r'tensor<(?:\d+x)*(\w+)>', signature)) == {'bf16'}, signature
  out, state = lowered.compile()(variables, images)
  assert {v[0].dtype for v in state['intermediates'].values()} == {jnp.dtype(jnp.bfloat16)}
  assert out.logits.dtype == jnp.float32
  reference = np.asarray(apply(variables, images, train=False).logits)
  scale = np.abs(reference).max()
  error = np.abs(np.asarray(out.logits) - reference).max() / scale
  # bfloat16 keeps 8 significant bits (2^-9 = 0.2% per rounding); over the 22 layers
  # measured ~1% of the logits' scale. With `dtype` ignored the error would be 0.
  assert 1e-3 < error < 0.05, error


def test_batchnorm_variant_updates_running_statistics():
  model = googlenet.create_model('googlenet_bn_tiny', num_classes=3)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(1), x, train=False), images)
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.1, s.dtype), shapes)
  assert 'bias' not in variables['params']['conv1']['conv']
  apply = _jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                       rngs={'dropout': jax.random.key(2)}))
  _, state = apply(variables, images)
  conv1 = jax.lax.conv_general_dilated(images, variables['params']['conv1']['conv']['kernel'],
                                       (2, 2), [(3, 3), (3, 3)],
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # flax momentum 0.9 = torch momentum 0.1: new = 0.9 * old + 0.1 * batch mean.
  np.testing.assert_allclose(state['batch_stats']['conv1']['bn']['mean'],
                             0.9 * 0.1 + 0.1 * conv1.mean(axis=(0, 1, 2)), rtol=1e-4)


def test_create_model_rejects_unknown_names_and_options():
  with pytest.raises(ValueError, match='unknown model'):
    googlenet.create_model('resnet50')
  with pytest.raises(ValueError, match='unknown model options'):
    googlenet.create_model('googlenet', num_clases=10)
  with pytest.raises(ValueError, match='unknown dtype'):
    googlenet.create_model('googlenet', dtype='float8')


def test_summary_command_writes_json(tmp_path, capsys):
  path = tmp_path / 'rows.json'
  cli.main(['summary', '--model', 'googlenet', '--json', str(path)])
  assert '6,998,552' in capsys.readouterr().out
  rows = json.loads(path.read_text())
  by_name = {r['name']: r for r in rows}
  assert by_name['inception_4c']['params'] == 510_104
  assert by_name['inception_4c']['output_shape'] == [14, 14, 512]
  assert set(rows[0]) >= {'name', 'output_shape', 'params', 'macs'}
