"""docs/functional.md's examples run in order, as one notebook, and compute what they say."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import linear_model

from inception_jax.configs import default
from inception_jax.serving import convert
from inception_jax.training import rundir
from helpers import random_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = tuple(f'class {i}' for i in range(5))


def _examples() -> list[str]:
  return re.findall(r'```python\n(.*?)```', (ROOT / 'docs' / 'functional.md').read_text(),
                    flags=re.S)


def _tree_dot(a, b) -> float:
  return float(sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


@pytest.fixture(scope='module')
def notebook(tmp_path_factory):
  """The namespace after every example ran, on a googlenet_bn_shallow run at 32x32.

  Depth changes none of what the examples show, and each compiles several
  differentiated copies of the network.
  """
  config = default.get_config()
  config.model, config.model_options.width, config.image_size = 'googlenet_bn_shallow', None, 32
  model = rundir.build_model(config, len(CLASSES))
  directory = tmp_path_factory.mktemp('notebook')
  convert.write_run(directory / 'workdirs' / 'default', config,
                    random_variables(model, config.image_size), CLASSES)
  namespace: dict = {}
  with pytest.MonkeyPatch.context() as patch:
    patch.chdir(directory)
    for index, example in enumerate(_examples()):
      code = compile(example, f'docs/functional.md example {index}', 'exec')
      exec(code, namespace)  # pylint: disable=exec-used
  return namespace


@pytest.mark.slow
def test_loss_is_the_papers_weighted_sum_of_its_terms(notebook):
  terms = notebook['terms']
  want = terms['main_loss'] + 0.3 * (terms['aux1_loss'] + terms['aux2_loss'])
  np.testing.assert_allclose(notebook['loss'], want, rtol=1e-6)
  assert set(notebook['grads']) == {'params', 'batch_stats'}
  assert not jax.tree.all(jax.tree.map(lambda a, b: np.allclose(a, b), notebook['batch_stats'],
                                       notebook['variables']['batch_stats']))


@pytest.mark.slow
def test_per_example_gradients_average_to_the_batch_gradient(notebook):
  ns = notebook
  want = jax.jit(jax.grad(ns['eval_loss']))(ns['params'], ns['batch'])
  got = jax.tree.map(lambda g: g.mean(axis=0), ns['per_example'])
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(jnp.max(jnp.abs(w))) + 1e-12
    np.testing.assert_allclose(g / scale, w / scale, atol=1e-4)


@pytest.mark.slow
def test_hessian_vector_product_is_reverse_over_reverse(notebook):
  ns = notebook
  params, batch, vector, hvp = ns['params'], ns['batch'], ns['vector'], ns['hvp']
  grad = jax.grad(ns['eval_loss'])
  want = jax.jit(jax.grad(lambda p: _tree_dot_jnp(grad(p, batch), vector)))(params)
  got = hvp(params, batch, vector)
  cosine = _tree_dot(got, want) / np.sqrt(_tree_dot(got, got) * _tree_dot(want, want))
  assert cosine > 0.999
  # The top eigenvalue bounds the Rayleigh quotient of any direction.
  direction = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  quotient = _tree_dot(direction, hvp(params, batch, direction)) / _tree_dot(direction, direction)
  assert abs(quotient) <= abs(float(ns['top_eigenvalue'])) * 1.01


def _tree_dot_jnp(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_ensemble_members_are_the_models_initialized_one_by_one(notebook):
  ns = notebook
  model, images = ns['model'], ns['images']
  member = model.init(ns['seeds'][2], images[:1], train=False)
  np.testing.assert_allclose(ns['member_logits'][2],
                             model.apply(member, images, train=False).logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ns['ensemble_probabilities'].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_integrated_gradients_sum_to_the_score_gain(notebook):
  """Completeness (Sundararajan et al. 2017), checked where the midpoint rule's error is
  small (1024 steps); the example's 64 steps approximate that integral."""
  ns = notebook
  label, image, baseline = ns['labels'][0], ns['image'], ns['baseline']
  gain = ns['class_score'](image, label) - ns['class_score'](baseline, label)
  alphas = (jnp.arange(1024) + 0.5) / 1024
  path = baseline + alphas[:, None, None, None] * (image - baseline)
  grads = jax.jit(jax.vmap(jax.grad(ns['class_score']), in_axes=(0, None)))(path, label)
  fine = (image - baseline) * grads.mean(axis=0)
  np.testing.assert_allclose(fine.sum(), gain, rtol=0.05, atol=5e-3)
  assert ns['saliency'].shape == image.shape


@pytest.mark.slow
def test_linear_probe_is_scikit_learns_ridge(notebook):
  ns = notebook
  ridge = linear_model.Ridge(alpha=ns['ridge'], fit_intercept=False, solver='svd').fit(
      np.asarray(ns['features'], np.float64), np.asarray(ns['targets'], np.float64))
  # float32 solve against float64: 8 examples, a near-singular Gram matrix
  np.testing.assert_allclose(ns['probe'], ridge.coef_.T, rtol=1e-2, atol=2e-3)


@pytest.mark.slow
def test_training_loop_takes_its_three_steps(notebook):
  state, metrics = notebook['state'], notebook['metrics']
  assert int(state.step) == 3
  assert np.isfinite(float(metrics['loss']))


@pytest.mark.slow
def test_exported_function_gives_the_in_process_classes(notebook):
  ns = notebook
  np.testing.assert_array_equal(ns['predicted'], ns['top_class'](ns['images']))
  assert ns['exported'].platforms == ('cpu', 'cuda', 'tpu')
