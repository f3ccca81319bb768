"""The package's imports go one way: down the folders, and without cycles.

Lowest first: the root's shared modules (config, paths, sharding, ...) -> model/ -> data/
-> training/ -> serving/ -> the entry points (cli, __main__, __init__, benchmark). A module
imports only its own folder or lower ones. Parsed with `ast` (nothing is imported), so the
test also sees imports inside functions.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'inception_jax'

LAYERS = ('base', 'model', 'data', 'training', 'serving', 'entry points')
FOLDERS = ('model', 'data', 'training', 'serving')
ENTRY_POINTS = {'cli', '__main__', '__init__', 'benchmark'}
GROUPED = ('configs', 'data.datasets')  # subpackages counted as one module


def _module_of(path: pathlib.Path) -> str:
  """'model.ops' for model/ops.py, 'data' for data/__init__.py, 'configs' for configs/*."""
  parts = list(path.relative_to(PACKAGE).with_suffix('').parts)
  if parts[-1] == '__init__' and len(parts) > 1:
    parts.pop()
  name = '.'.join(parts)
  return next((group for group in GROUPED if name.startswith(group)), name)


def layer_of(module: str) -> str:
  top = module.split('.')[0]
  if top in FOLDERS:
    return top
  return 'entry points' if top in ENTRY_POINTS else 'base'


def _known(dotted: str, modules: set[str]) -> str:
  """The longest prefix of `dotted` that is a module of the package."""
  parts = dotted.split('.')
  for end in range(len(parts), 0, -1):
    candidate = '.'.join(parts[:end])
    if candidate in modules or candidate in GROUPED or candidate in FOLDERS:
      return candidate
  return dotted


def package_imports(source: str, modules: set[str]) -> set[str]:
  """The package's modules that `source` imports, as 'model.ops', 'config', ..."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.module:
      parts = node.module.split('.')
      if parts[0] != 'inception_jax':
        continue
      base = '.'.join(parts[1:])
      for alias in node.names:
        found.add(_known(f'{base}.{alias.name}' if base else alias.name, modules))
    elif isinstance(node, ast.Import):
      found.update(_known(alias.name.split('.', 1)[1], modules) for alias in node.names
                   if alias.name.startswith('inception_jax.'))
  return found


def upward_imports(sources: dict[str, str]) -> list[str]:
  """'a (folder) imports b (higher folder)' for every import against the order."""
  modules = set(sources)
  wrong = []
  for module, source in sorted(sources.items()):
    for imported in sorted(package_imports(source, modules)):
      mine, theirs = layer_of(module), layer_of(imported)
      if LAYERS.index(theirs) > LAYERS.index(mine):
        wrong.append(f'{module} ({mine}) imports {imported} ({theirs})')
  return wrong


def import_cycles(sources: dict[str, str]) -> list[list[str]]:
  """Every cycle of imports between modules, each as the path that closes it."""
  modules = set(sources)
  graph = {m: sorted(package_imports(s, modules) - {m}) for m, s in sources.items()}
  cycles, done = [], set()

  def visit(module: str, path: list[str]) -> None:
    if module in path:
      cycles.append(path[path.index(module):] + [module])
      return
    if module in done:
      return
    for imported in graph.get(module, ()):
      visit(imported, path + [module])
    done.add(module)

  for module in sorted(graph):
    visit(module, [])
  return cycles


def _sources() -> dict[str, str]:
  sources: dict[str, str] = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    module = _module_of(path)
    sources[module] = sources.get(module, '') + '\n' + path.read_text()
  return sources


def test_every_folder_is_a_layer():
  folders = {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').exists()}
  assert folders == set(FOLDERS) | {'configs'}


def test_imports_go_downward_only():
  assert upward_imports(_sources()) == []


def test_no_import_cycles():
  assert import_cycles(_sources()) == []


SOURCES = {'model.googlenet': '', 'model.ops': '', 'data.pipeline': '', 'training.loop': '',
           'training.steps': '', 'serving.export': '', 'config': '', 'cli': ''}


@pytest.mark.parametrize('module, source, expected', [
    ('model.googlenet', 'from inception_jax.training import loop\n',
     ['model.googlenet (model) imports training.loop (training)']),
    ('model.googlenet', 'def f():\n  from inception_jax.training.steps import TrainState\n',
     ['model.googlenet (model) imports training.steps (training)']),
    ('model.googlenet', 'import inception_jax.data.pipeline\n',
     ['model.googlenet (model) imports data.pipeline (data)']),
    ('data.pipeline', 'from inception_jax import training\n',
     ['data.pipeline (data) imports training (training)']),
    ('training.loop', 'from inception_jax.serving import export\n',
     ['training.loop (training) imports serving.export (serving)']),
    ('config', 'from inception_jax.model import ops\n', ['config (base) imports model.ops (model)']),
    ('model.googlenet', 'from inception_jax.model import ops\nfrom inception_jax import config\n', []),
    ('cli', 'from inception_jax.serving import export\n', []),
])
def test_an_upward_import_is_found(module, source, expected):
  assert upward_imports({**SOURCES, module: source}) == expected


def test_a_cycle_is_found():
  sources = {**SOURCES, 'training.loop': 'from inception_jax.training import steps\n',
             'training.steps': 'def f():\n  from inception_jax.training import loop\n'}
  assert import_cycles(sources) == [['training.loop', 'training.steps', 'training.loop']]
