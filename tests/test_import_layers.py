"""The package's imports go one way: a module imports only its own layer or lower ones.

Parsed with `ast` (nothing is imported), so the test also sees imports inside
functions.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'inception_jax'

# Lowest first: layers -> model -> sharding -> data -> step -> run directory -> loop
# -> serving -> CLI, with a base of dependency-free helpers under everything.
LAYERS = (
    ('base', {'config', 'configs', 'host_memory', 'compilation_cache', 'xla_options', 'caffe_pb2',
              'paths', 'weights'}),
    ('model layers', {'ops', 'layers'}),
    ('model', {'models', 'summary', 'metrics'}),
    ('sharding', {'sharding', 'distributed', 'preemption'}),
    ('data', {'preprocessing', 'datasets', 'input_pipeline'}),
    ('step', {'optim', 'steps'}),
    ('run directory', {'checkpointing', 'rundir', 'finetune', 'metric_logging'}),
    ('loop', {'train'}),
    ('serving', {'evaluation', 'inference', 'export', 'convert', 'benchmark'}),
    ('cli', {'cli', '__main__', '__init__'}),
)
RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}


def _module_of(path: pathlib.Path) -> str:
  relative = path.relative_to(PACKAGE)
  return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def package_imports(source: str) -> set[str]:
  """The package's top-level modules that `source` imports (`from inception_jax import x`)."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.module:
      parts = node.module.split('.')
      if parts[0] != 'inception_jax':
        continue
      if len(parts) > 1:
        found.add(parts[1])
      else:
        found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.Import):
      found.update(alias.name.split('.')[1] for alias in node.names
                   if alias.name.startswith('inception_jax.'))
  return found


def upward_imports(sources: dict[str, str]) -> list[str]:
  """'a (layer) imports b (higher layer)' for every import against the order."""
  wrong = []
  for module, source in sorted(sources.items()):
    for imported in sorted(package_imports(source)):
      if RANK[imported] > RANK[module]:
        wrong.append(f'{module} ({LAYERS[RANK[module]][0]}) imports {imported} '
                     f'({LAYERS[RANK[imported]][0]})')
  return wrong


def _sources() -> dict[str, str]:
  sources: dict[str, str] = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    module = _module_of(path)
    sources[module] = sources.get(module, '') + '\n' + path.read_text()
  return sources


def test_every_module_has_a_layer():
  assert sorted(set(_sources()) - set(RANK)) == []


def test_imports_go_downward_only():
  assert upward_imports(_sources()) == []


@pytest.mark.parametrize('source, expected', [
    ('from inception_jax import train\n', ['models (model) imports train (loop)']),
    ('def f():\n  from inception_jax.steps import TrainState\n',
     ['models (model) imports steps (step)']),
    ('import inception_jax.input_pipeline\n', ['models (model) imports input_pipeline (data)']),
    ('from inception_jax import layers, ops\n', []),
])
def test_an_upward_import_is_found(source, expected):
  assert upward_imports({'models': source}) == expected
