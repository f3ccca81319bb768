"""Where a benchmark case's time goes, op category by op category, for JAX and torch eager.

  python -m experiments.cpu_profile [--cases infer:32:224,train:128:64] [--rounds 2] [--top N]
      [--dtype bfloat16]

For each case (googlenet_bn, float32 unless `--dtype`, the `fast` kernel set: the CPU
default; torch's bfloat16 is its autocast) both peers run in one process, in
alternating rounds of `--steps` steps each: JAX under
`jax.profiler` (XLA's per-kernel events of the CPU runtime, each mapped to its
instruction in the compiled program), torch eager under `torch.profiler` (self time
of each aten op, optimizer ops found by their `Optimizer.step` parent). Prints one
Markdown table per case: milliseconds per step and category for each peer, and the
step's wall time. JAX's kernels may run two at a time, so its sum can exceed the wall.
"""

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile
import time
from typing import Any, Iterable

import jax
import numpy as np

from inception_jax import benchmark

CATEGORIES = ('conv/matmul forward', 'conv/matmul input gradient',
              'conv/matmul weight gradient', 'conv/matmul backward (input + weight)',
              'pools', 'BatchNorm + ReLU', 'concatenations and copies',
              'optimizer update and norms', 'the rest')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+?)(?:\{[^}]*\})? ([a-z\-]+)\((.*)$')
_COMPILE_PHASES = {'/jax/core/compile/jaxpr_trace_duration': 'trace',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
                   '/jax/core/compile/backend_compile_duration': 'XLA compile'}
_NO_KERNEL = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast')
_COPIES = ('copy', 'concatenate', 'transpose', 'bitcast', 'slice', 'dynamic-slice',
           'dynamic-update-slice', 'pad', 'reshape', 'broadcast')


def hlo_categories(hlo: str, kernel_shapes: set[tuple[int, ...]]) -> dict[str, str]:
  """Category of each kernel (instruction that runs) in the entry of compiled HLO `hlo`.

  A convolution or matrix product (alone or inside a fusion) is a weight gradient
  when its result has a kernel's dimensions (`kernel_shapes`, sorted) and its source
  op is under autodiff's `transpose(` or unnamed (XLA's rewrites of weight gradients
  drop the name); otherwise an input gradient under `transpose(`, else forward.
  """
  opcodes = collections.defaultdict(set)  # computation -> opcodes inside it
  calls = collections.defaultdict(set)
  entry, computation = {}, None
  for line in hlo.splitlines():
    header = re.match(r'^(ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header and not line.startswith(' '):
      computation = 'ENTRY' if header.group(1) else header.group(2)
      continue
    match = _INSTRUCTION.match(line)
    if not match or computation is None:
      continue
    name, shape, opcode, rest = match.groups()
    opcodes[computation].add(opcode)
    calls[computation].update(re.findall(r'(?:calls|to_apply|body|condition)=%?([\w.\-]+)', rest))
    if computation == 'ENTRY':
      op_name = re.search(r'op_name="([^"]*)"', rest)
      entry[name] = (shape, opcode, rest, op_name.group(1) if op_name else '')

  def inner(computation: str, seen: frozenset = frozenset()) -> set[str]:
    found = set(opcodes[computation])
    for callee in calls[computation] - seen:
      found |= inner(callee, seen | {computation})
    return found

  categories = {}
  for name, (shape, opcode, rest, op_name) in entry.items():
    if opcode in _NO_KERNEL:
      continue
    called = set()
    for callee in re.findall(r'(?:calls|to_apply|body)=%?([\w.\-]+)', rest):
      called |= inner(callee)
    kinds = called | {opcode}
    dims = tuple(sorted(int(d) for d in re.findall(r'\d+', shape.split('{')[0][4:])))
    backward = 'transpose(' in op_name
    if kinds & {'convolution', 'dot'}:
      if dims in kernel_shapes and (backward or not op_name):
        categories[name] = 'conv/matmul weight gradient'
      else:
        categories[name] = ('conv/matmul input gradient' if backward
                            else 'conv/matmul forward')
    elif 'transpose' in kinds and not op_name:  # a weight gradient's operand laid out anew
      categories[name] = 'concatenations and copies'
    elif 'GoogLeNet' not in op_name and 'log_softmax' not in op_name and (
        'reduce' in kinds or 'add' in kinds or 'multiply' in kinds) and not re.search(
            r'top_k|one_hot|threefry|softmax|cross_entropy|log', op_name):
      categories[name] = 'optimizer update and norms'
    elif re.search(r'pool|reduce-window|select-and-scatter', op_name + ' '.join(kinds)):
      categories[name] = 'pools'
    elif re.search(r'\.activate/|/bn/|BatchNorm|relu', op_name):
      categories[name] = 'BatchNorm + ReLU'
    elif kinds - {'parameter', 'constant'} <= set(_COPIES) or op_name.rsplit('/', 1)[-1] in (
        'concatenate', 'transpose', 'copy', 'pad', 'slice', 'reshape'):
      categories[name] = 'concatenations and copies'
    else:
      categories[name] = 'the rest'
  return categories


def kernel_descriptions(hlo: str) -> dict[str, str]:
  """'result shape, source op' of each instruction of compiled HLO `hlo`, by name."""
  descriptions = {}
  for line in hlo.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      op_name = re.search(r'op_name="([^"]*)"', match.group(4))
      descriptions[match.group(1)] = (f"{match.group(2)[:48]}, "
                                      f"{op_name.group(1)[-90:] if op_name else 'unnamed'}")
  return descriptions


def kernel_shapes(params: Any) -> set[tuple[int, ...]]:
  """Sorted dimensions of every kernel, flattened to 2-D too, and of each inception block's
  concatenated 1x1 kernels (the `fast` set's single product over a block's input)."""
  shapes = set()
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  by_parent = collections.defaultdict(list)
  for path, leaf in flat:
    keys = [getattr(k, 'key', str(k)) for k in path]
    if keys[-1] != 'kernel':
      continue
    shape = tuple(leaf.shape)
    shapes.add(tuple(sorted(shape)))
    shapes.add(tuple(sorted((int(np.prod(shape[:-1])), shape[-1]))))
    if len(shape) == 4 and shape[:2] == (1, 1):
      by_parent[tuple(keys[:-3])].append(shape)
  for kernels in by_parent.values():
    for cin in {k[2] for k in kernels}:
      shapes.add(tuple(sorted((cin, sum(k[3] for k in kernels if k[2] == cin)))))
  return shapes


def jax_profile(run: Any, steps: int, categories: dict[str, str]
                ) -> tuple[dict[str, float], float]:
  """(ms per step per category, wall ms per step) of `steps` runs under jax.profiler."""
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(steps):
      run()
    wall = (time.perf_counter() - start) / steps
    jax.profiler.stop_trace()
    trace = next(pathlib.Path(directory).rglob('perfetto_trace.json.gz'))
    events = json.load(gzip.open(trace))
  events = events['traceEvents'] if isinstance(events, dict) else events
  totals = collections.Counter()
  for event in events:
    op = (event.get('args') or {}).get('hlo_op')
    if event.get('ph') == 'X' and op in categories:
      totals[categories[op]] += event['dur'] / 1e3 / steps
      totals[f'kernel: {op}'] += event['dur'] / 1e3 / steps
  return dict(totals), 1e3 * wall


def torch_category(name: str, ancestors: Iterable[str]) -> str:
  """The category of a torch profiler event named `name` under `ancestors`."""
  if any(a.startswith('Optimizer.') for a in ancestors):
    return 'optimizer update and norms'
  if 'convolution_backward' in name or name in ('aten::mm',):
    return 'conv/matmul backward (input + weight)'
  if 'convolution' in name or name in ('aten::addmm', 'aten::linear', 'aten::matmul'):
    return 'conv/matmul forward'
  if 'pool' in name:
    return 'pools'
  if re.search(r'batch_norm|relu|threshold|clamp_min', name):  # relu_ is clamp_min_
    return 'BatchNorm + ReLU'
  if re.search(r'aten::(cat|copy_|clone|contiguous|_to_copy|to|t|transpose|view|reshape|'
               r'as_strided|empty|empty_like|zeros_like|slice|narrow|split)$', name):
    return 'concatenations and copies'
  return 'the rest'


def torch_profile(run: Any, steps: int) -> tuple[dict[str, float], float]:
  """(ms per step per category, wall ms per step) of `steps` runs under torch.profiler."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    start = time.perf_counter()
    for _ in range(steps):
      run()
    wall = (time.perf_counter() - start) / steps
  totals = collections.Counter()
  for event in profile.events():
    if not event.name.startswith('aten::') and not event.name.startswith('Optimizer.'):
      continue
    ancestors, parent = [], event.cpu_parent
    while parent is not None:
      ancestors.append(parent.name)
      parent = parent.cpu_parent
    if event.name.startswith('Optimizer.') and ancestors:
      continue
    category = torch_category(event.name, ancestors)
    totals[category] += event.self_cpu_time_total / 1e3 / steps
    if category == 'the rest':
      totals[f'rest: {event.name}'] += event.self_cpu_time_total / 1e3 / steps
  return dict(totals), 1e3 * wall


def profile_case(case: benchmark.Case, rounds: int, steps: int) -> dict[str, Any]:
  """Per-round category times and walls of both peers on `case`, in alternating rounds."""
  compile_phases = collections.Counter()

  def listener(name: str, seconds: float, **kwargs: Any) -> None:
    del kwargs
    if name in _COMPILE_PHASES:
      compile_phases[_COMPILE_PHASES[name]] += seconds

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    jax_runner = benchmark.jax_runner(case, 'fast', None)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  hlo = jax_runner.program.as_text()
  first = jax_runner.program.args_info[0][0]
  params = first['params'] if case.kind == 'infer' else first.params
  categories = hlo_categories(hlo, kernel_shapes(params))
  jax_run, torch_run = jax_runner.run, benchmark.torch_runner(case, 'eager').run
  results = {'jax': [], 'torch': []}
  for _ in range(rounds):
    for run in (jax_run, torch_run):
      run()  # the lead-in (benchmark.time_interleaved)
    results['jax'].append(jax_profile(jax_run, steps, categories))
    results['torch'].append(torch_profile(torch_run, steps))
  kernels = collections.Counter(categories.values())
  return dict(case=case.name, compile_phases=dict(compile_phases), results=results,
              kernels=dict(kernels), fusions=sum(' fusion(' in line for line in hlo.splitlines()),
              categories=categories, descriptions=kernel_descriptions(hlo))


def _spread(values: list[float]) -> str:
  return f'{np.median(values):.0f} ({min(values):.0f}–{max(values):.0f})'


def format_case(report: dict[str, Any], top: int = 0) -> str:
  """One Markdown table: ms per step per category, median (min–max) over the rounds;
  with `top`, then each category's `top` longest JAX kernels (ms per step, mean of the rounds)."""
  lines = [f"**{report['case']}**: {len(report['results']['jax'])} rounds; the JAX "
           f"program has {report['fusions']} fusions and "
           f"{sum(report['kernels'].values())} kernels; building it took "
           + ', '.join(f'{phase} {seconds:.1f} s'
                       for phase, seconds in report['compile_phases'].items()) + '.',
           '', '| category | JAX ms/step | torch ms/step |', '|---|---:|---:|']
  for category in CATEGORIES:
    jax_ms = [r[0].get(category, 0.0) for r in report['results']['jax']]
    torch_ms = [r[0].get(category, 0.0) for r in report['results']['torch']]
    if max(jax_ms + torch_ms) > 0:
      lines.append(f'| {category} | {_spread(jax_ms)} | {_spread(torch_ms)} |')
  for label, index in (('sum of the kernels / ops', None), ('wall time of the step', 1)):
    cells = []
    for peer in ('jax', 'torch'):
      values = [r[1] if index else sum(v for k, v in r[0].items() if k in CATEGORIES)
                for r in report['results'][peer]]
      cells.append(_spread(values))
    lines.append(f'| **{label}** | {cells[0]} | {cells[1]} |')
  rest = collections.Counter()
  for totals, _ in report['results']['torch']:
    rest.update({k[len('rest: '):]: v for k, v in totals.items() if k.startswith('rest: ')})
  if rest:
    lines += ['', "torch's largest ops in the rest: " + ', '.join(
        f'{name} {ms / len(report["results"]["torch"]):.0f} ms' for name, ms in
        rest.most_common(4)) + '.']
  kernels = collections.Counter()
  for totals, _ in report['results']['jax']:
    kernels.update({k[len('kernel: '):]: v / len(report['results']['jax'])
                    for k, v in totals.items() if k.startswith('kernel: ')})
  for category in CATEGORIES if top else ():
    longest = [(ms, op) for op, ms in kernels.most_common()
               if report['categories'][op] == category][:top]
    if longest:
      lines += ['', f"JAX's longest kernels in {category}:", '']
      lines += [f"* {ms:.1f} ms: {op} ({report['descriptions'][op]})" for ms, op in longest]
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default='infer:32:224,train:128:64')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--steps', type=int, default=2, help='profiled steps per round')
  parser.add_argument('--top', type=int, default=0,
                      help="also list each category's N longest JAX kernels")
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='compute dtype of both peers')
  args = parser.parse_args()
  print(f'{benchmark.cpu_model()}, {benchmark.threads()} threads, jax {jax.__version__}',
        flush=True)
  for case in benchmark.parse_cases(args.cases, ['googlenet_bn'], [args.dtype]):
    print('\n' + format_case(profile_case(case, args.rounds, args.steps), args.top),
          flush=True)


if __name__ == '__main__':
  main()
