"""`python -m inception_jax benchmark`: throughput of GoogLeNet, optionally against torchvision.

Cases are inference (eval mode, no aux heads) and full training steps (forward
with aux heads, loss, backward, optimizer update). Within a case every
implementation (JAX with each kernel set, torchvision eager and torch.compile)
is warmed up, then timed in interleaved rounds — one timed run of each per
round, the order rotating, each right after an untimed one of its own (see
`time_interleaved`) — so that drift on a shared machine hits all of them alike;
compare the ratios, not absolute times across runs.

Per implementation: images/s (median and min–max over rounds), compile time
(XLA compile; torch: the first call), achieved GFLOP/s from the model's own
multiply-add count (inference 2·MACs per image, training 6·MACs with the aux
heads), and that as a fraction of a large matmul measured in the same run in the
case's dtype; with `--peak-tflops`, also as a fraction of the device's peak (MFU).
torch runs on the device JAX uses (CPU, or CUDA beside a GPU). With `--startup`,
each implementation of each case also runs once more in a fresh process of its
own, which gives its peak resident memory (the process's maximum, compilation
included, nothing else loaded) and its start-up time: from launching Python to
the first step's result (imports, parameter initialization, compilation, one step).

With `--input-pipeline` it times the input pipeline instead (`run_input_benchmark`).
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax import host_memory, sharding, xla_options
from inception_jax.model import googlenet, summary
from inception_jax.model import ops as ops_lib
from inception_jax.training import steps

TORCH_INSTALL = 'pip install -r requirements-test.txt  (torch and torchvision)'
TORCH_TOPOLOGY = 'googlenet_bn'  # torchvision's googlenet has this topology and FLOPs
MATMUL_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark case: inference or a training step at a batch and image size."""
  model: str
  kind: str
  batch: int
  size: int
  dtype: str

  @property
  def name(self) -> str:
    return f'{self.model} {self.kind} b{self.batch} {self.size}px {self.dtype}'


@dataclasses.dataclass
class Runner:
  """A warmed-up implementation of a case: `run()` does one batch and waits for it."""
  impl: str
  run: Callable[[], None]
  compile_s: float
  times: list[float] = dataclasses.field(default_factory=list)
  program: jax.stages.Compiled | None = None  # JAX's compiled program, for inspection


def parse_cases(spec: str, model_names: Sequence[str], dtypes: Sequence[str]) -> list[Case]:
  """Cases from 'kind:batch:size,...' for each model and dtype; kind is infer or train."""
  cases = []
  for item in spec.split(','):
    parts = item.strip().split(':')
    if len(parts) != 3 or parts[0] not in ('infer', 'train') or not all(
        p.isdigit() for p in parts[1:]):
      raise errors.UserError(f'bad case {item!r}: write kind:batch:size with kind infer or '
                             'train, e.g. train:32:224.')
    for model in model_names:
      for dtype in dtypes:
        cases.append(Case(model, parts[0], int(parts[1]), int(parts[2]), dtype))
  return cases


def parse_peaks(spec: str | None) -> dict[str, float]:
  """Peak TFLOP/s per dtype from 'dtype=TFLOPS,...' (e.g. 'bfloat16=989,float32=495')."""
  peaks = {}
  for item in filter(None, (spec or '').split(',')):
    dtype, _, value = item.strip().partition('=')
    try:
      peak = float(value)
    except ValueError:
      peak = 0.0
    if dtype not in googlenet.DTYPES or not peak > 0:
      raise errors.UserError(f'bad --peak-tflops entry {item!r}: write dtype=TFLOPS with dtype '
                             f'one of {sorted(googlenet.DTYPES)} and a positive number, e.g. '
                             'bfloat16=989.')
    peaks[dtype] = peak
  return peaks


def cpu_model() -> str:
  """The CPU's marketing name (Linux /proc/cpuinfo), else platform.processor()."""
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def threads() -> int:
  """CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def matmul_gflops(dtype: str, repeats: int = 3) -> float:
  """Best GFLOP/s of a MATMUL_SIZE² `jnp.dot` in `dtype` on the default device."""
  a = jax.random.normal(jax.random.key(0), (MATMUL_SIZE, MATMUL_SIZE), googlenet.DTYPES[dtype])
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * MATMUL_SIZE**3 / best / 1e9


def flops_per_image(case: Case) -> float:
  """Forward 2·MACs per image for inference; 6·MACs (aux heads included) for training."""
  totals = summary.totals(summary.layer_table(googlenet.create_model(case.model), case.size))
  return 2.0 * totals['macs'] if case.kind == 'infer' else 6.0 * totals['macs_with_aux']


def _train_config(case: Case) -> Any:
  config = config_lib.get_base_config()
  config.update(dict(model=case.model, dtype=case.dtype, batch_size=case.batch,
                     optimizer='sgd', learning_rate=0.01, warmup_epochs=0.0,
                     num_train_steps=1000, ema_decay=0.0))
  return config


def compile_jax(case: Case, ops: str, compiler_options: dict[str, Any] | None
                ) -> tuple[jax.stages.Compiled, tuple[Any, Any], float]:
  """`case`'s JAX program with kernel set `ops`: (compiled, its arguments, compile seconds).

  Inference is (variables, images) -> logits; training is the project's train step,
  (state, batch) -> (state, metrics), whose state argument is donated.
  `compiler_options` None: the project's defaults (`xla_options.for_model`).
  """
  model = googlenet.create_model(case.model, dtype=case.dtype, ops=ops)
  shape = (case.batch, case.size, case.size, 3)
  if case.kind == 'infer':
    images = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    variables = googlenet.init_variables(model, jax.random.key(0), (1, *shape[1:]))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
    if compiler_options is None:
      compiler_options = xla_options.for_model(jax.default_backend(), model.dtype)
    start = time.perf_counter()
    compiled = apply.lower(variables, images).compile(xla_options.supported(compiler_options))
    return compiled, (variables, images), time.perf_counter() - start
  config = _train_config(case)
  mesh = sharding.create_mesh(jax.devices()[:1])
  state, state_sharding = steps.create_train_state(config, model, (1, *shape[1:]), mesh, 1000)
  pixels = jax.random.randint(jax.random.key(1), shape, 0, 256).astype(jnp.uint8)
  batch = {'image': pixels, 'label': jnp.arange(case.batch, dtype=jnp.int32) % 1000}
  step = steps.make_train_step(config, mesh, state_sharding, compiler_options)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return compiled, (state, batch), time.perf_counter() - start


def jax_runner(case: Case, ops: str, compiler_options: dict[str, Any] | None) -> Runner:
  """The JAX implementation of `case` with kernel set `ops` (`compile_jax`), run once."""
  compiled, (first, second), compile_s = compile_jax(case, ops, compiler_options)
  if case.kind == 'infer':

    def run() -> None:
      compiled(first, second).block_until_ready()
  else:
    holder = [first]

    def run() -> None:
      holder[0], metrics = compiled(holder[0], second)
      metrics['loss'].block_until_ready()
  host_memory.release_free_memory()
  run()
  return Runner(f'jax {ops}', run, compile_s, program=compiled)


def _import_torch() -> tuple[Any, Any]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise errors.UserError(f'--compare torchvision needs torch and torchvision ({e}); '
                           f'install them with: {TORCH_INSTALL}') from e
  return torch, torchvision


def torch_device(platform: str, cuda_available: bool) -> str:
  """The torch device that runs beside JAX's `platform`: 'cpu' beside CPU, 'cuda' beside GPU.

  Raises:
    UserError: beside a GPU without CUDA in torch, or beside any other platform
      (TPU), where no torch peer runs on the same device.
  """
  if platform == 'cpu':
    return 'cpu'
  if platform == 'gpu' and cuda_available:
    return 'cuda'
  raise errors.UserError(
      f'--compare torchvision runs torch on the device JAX uses ({platform}), and torch '
      'cannot use it here: install a CUDA build of torch beside a GPU, or run the '
      'comparison without --compare on this platform.')


def torch_runner(case: Case, mode: str) -> Runner:
  """torchvision's googlenet for `case`, channels_last, eager or torch.compile'd, on the
  device JAX uses (`torch_device`); each run waits for the device to finish."""
  torch, torchvision = _import_torch()
  device = torch_device(jax.default_backend(), torch.cuda.is_available())
  torch.set_num_threads(threads())
  net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
  net = net.to(device, memory_format=torch.channels_last)
  module = torch.compile(net) if mode == 'compile' else net
  images = torch.randn(case.batch, 3, case.size, case.size, device=device).contiguous(
      memory_format=torch.channels_last)
  labels = torch.arange(case.batch, device=device) % 1000
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=case.dtype == 'bfloat16')
  synchronize = torch.cuda.synchronize if device == 'cuda' else lambda: None
  if case.kind == 'infer':
    net.eval()

    def run() -> None:
      with torch.inference_mode(), autocast:
        module(images)
      synchronize()
  else:
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.functional.cross_entropy

    def run() -> None:
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        out = module(images)
        loss = loss_fn(out.logits, labels) + 0.3 * (
            loss_fn(out.aux_logits1, labels) + loss_fn(out.aux_logits2, labels))
      loss.backward()
      optimizer.step()
      synchronize()
  start = time.perf_counter()
  run()
  return Runner(f'torch {mode}', run, time.perf_counter() - start)


def time_interleaved(runners: Sequence[Runner], repeats: int, warmup: int,
                     lead_in: int) -> None:
  """Warms each runner up, then times one run of each per round, rotating the order.

  Each timed run follows `lead_in` untimed runs of the same implementation, so
  that it starts as a training loop's steps do, right after another one. Without
  them a step pays for the others' having run in between: on virtual machines
  that hand idle freed memory back to the host (virtio-balloon free page
  reporting), XLA's temporaries, freed at the end of each step, are faulted back
  in from the host, which slows the step that follows an idle pause (measurements:
  experiments/results/cpu_speed.md).
  """
  for runner in runners:
    for _ in range(warmup):
      runner.run()
  for round_index in range(repeats):
    shift = round_index % len(runners)
    for runner in [*runners[shift:], *runners[:shift]]:
      for _ in range(lead_in):
        runner.run()
      with jax.transfer_guard('disallow'):
        start = time.perf_counter()
        runner.run()
        runner.times.append(time.perf_counter() - start)


def make_runner(case: Case, impl: str, compiler_options: dict[str, Any] | None) -> Runner:
  """The runner of `impl` ('jax xla', 'jax fast', 'torch eager', 'torch compile')."""
  family, variant = impl.split()
  if family == 'torch':
    return torch_runner(case, variant)
  return jax_runner(case, variant, compiler_options)


def probe_in_fresh_process(case: Case, impl: str, fast_compile: bool) -> dict[str, float]:
  """Start-up time and peak resident memory of `impl` on `case`, in a process of its own.

  The child imports everything, builds and compiles the implementation, runs
  one step (start-up ends when its result is ready), then two more, and reports
  its maximum resident set size.
  """
  spec = json.dumps(dict(case=dataclasses.asdict(case), impl=impl, fast_compile=fast_compile))
  start = time.time()
  done = subprocess.run(
      [sys.executable, '-c', 'import sys; from inception_jax import benchmark; '
       'benchmark.probe_main(sys.argv[1])', spec],
      capture_output=True, text=True, check=False, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  if done.returncode:
    raise RuntimeError(f'the fresh-process run of {impl} on {case.name} failed:\n'
                       f'{done.stderr[-3000:]}')
  result = json.loads(done.stdout.strip().splitlines()[-1])
  return dict(startup_s=result['first_result_at'] - start, peak_rss_mb=result['peak_rss_mb'])


def probe_main(spec: str) -> None:
  """The child of `probe_in_fresh_process`: prints one JSON line."""
  spec = json.loads(spec)
  case, impl = Case(**spec['case']), spec['impl']
  runner = make_runner(case, impl, xla_options.FAST_COMPILE if spec['fast_compile']
                       else None)
  first_result_at = time.time()
  for _ in range(2):
    runner.run()
  print(json.dumps(dict(first_result_at=first_result_at, peak_rss_mb=peak_rss_mb())))


def peak_rss_mb() -> float:
  """This process's peak resident memory in MiB.

  Linux's VmHWM starts afresh with each program (execve); `getrusage`'s
  ru_maxrss does not: it keeps the forking parent's peak, so a child started
  from a large process would report the parent's.
  """
  try:
    for line in pathlib.Path('/proc/self/status').read_text().splitlines():
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB (Linux)


def case_rows(case: Case, runners: Sequence[Runner], ceiling: float,
              peak_tflops: float | None = None) -> list[dict[str, Any]]:
  """One result dict per runner of `case` (start-up and memory are added by `--startup`).

  With `peak_tflops` (the device's peak for the case's dtype) each row also has
  'mfu': achieved FLOP/s over that peak.
  """
  flops = flops_per_image(case)
  rows = []
  for runner in runners:
    rates = sorted(case.batch / t for t in runner.times)
    median = statistics.median(rates)
    gflops = median * flops / 1e9
    rows.append(dict(case=case.name, **dataclasses.asdict(case), impl=runner.impl,
                     images_per_s=median, images_per_s_min=rates[0],
                     images_per_s_max=rates[-1], ms_per_batch=1e3 * case.batch / median,
                     compile_s=runner.compile_s, gflops=gflops, ceiling_gflops=ceiling,
                     fraction_of_ceiling=gflops / ceiling))
    if peak_tflops:
      rows[-1].update(peak_tflops=peak_tflops, mfu=gflops / (1e3 * peak_tflops))
  return rows


def ratio_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per case, each JAX implementation's throughput over each torch implementation's."""
  ratios = []
  for case in dict.fromkeys(r['case'] for r in rows):
    of_case = [r for r in rows if r['case'] == case]
    for mine in (r for r in of_case if r['impl'].startswith('jax')):
      for theirs in (r for r in of_case if r['impl'].startswith('torch')):
        ratios.append(dict(case=case, jax=mine['impl'], torch=theirs['impl'],
                           ratio=mine['images_per_s'] / theirs['images_per_s']))
  return ratios


def format_markdown(report: dict[str, Any]) -> str:
  """The report as Markdown: a header line, the results table and the ratio table.

  Start-up time and peak memory columns show '-' where they were not measured.
  """
  lines = [f"GoogLeNet benchmark, {report['date']}, {report['device']}, "
           f"{report['threads']} threads, jax {report['jax']}"
           + (f", torch {report['torch']}" if report.get('torch') else '')
           + (f", GLIBC_TUNABLES={report['glibc_tunables']}" if report.get('glibc_tunables')
              else '') + '. Matmul '
           f"ceiling ({MATMUL_SIZE}² jnp.dot): " + ', '.join(
               f'{d} {g:.0f} GFLOP/s' for d, g in report['ceilings'].items()) + '.'
           + (' MFU against the peak given by --peak-tflops: ' + ', '.join(
               f'{d} {t:g} TFLOP/s' for d, t in report['peak_tflops'].items()) + '.'
              if report.get('peak_tflops') else ''), '',
           '| case | impl | images/s median (min–max) | ms/batch | compile s | GFLOP/s '
           '| of ceiling | MFU | start-up s | peak RSS MB |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in report['results']:
    lines.append(f"| {r['case']} | {r['impl']} | {r['images_per_s']:.1f} "
                 f"({r['images_per_s_min']:.1f}–{r['images_per_s_max']:.1f}) | "
                 f"{r['ms_per_batch']:.0f} | {r['compile_s']:.1f} | {r['gflops']:.0f} | "
                 f"{r['fraction_of_ceiling']:.2f} | {_optional(r, 'mfu', '.2f')} | "
                 f"{_optional(r, 'startup_s', '.1f')} | "
                 f"{_optional(r, 'peak_rss_mb', '.0f')} |")
  if report['ratios']:
    lines += ['', 'Throughput ratio JAX / torch (interleaved in one process; > 1: JAX faster):',
              '', '| case | jax | torch | ratio |', '|---|---|---|---:|']
    lines += [f"| {r['case']} | {r['jax']} | {r['torch']} | {r['ratio']:.2f}× |"
              for r in report['ratios']]
  return '\n'.join(lines)


def _optional(row: dict[str, Any], key: str, spec: str) -> str:
  return format(row[key], spec) if key in row else '-'


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
  """Runs every case of `args` and returns the report (also written as .md and .json)."""
  if args.input_pipeline:
    return run_input_benchmark(args)
  cases = parse_cases(args.cases, args.models.split(','), args.dtypes.split(','))
  ops_sets = args.ops.split(',')
  for ops in ops_sets:
    ops_lib.resolve(ops)
  torch_modes = args.torch_modes.split(',') if args.compare == 'torchvision' else []
  unknown = sorted(set(torch_modes) - {'eager', 'compile'})
  if unknown:
    raise errors.UserError(f"unknown --torch-modes {unknown}: use 'eager' and/or 'compile'.")
  peaks = parse_peaks(args.peak_tflops)
  if torch_modes:
    torch, _ = _import_torch()
    torch_device(jax.default_backend(), torch.cuda.is_available())  # before any compile
  compiler_options = xla_options.FAST_COMPILE if args.fast_compile else None
  ceilings = {d: matmul_gflops(d) for d in dict.fromkeys(c.dtype for c in cases)}
  results = []
  for case in cases:
    print(f'{case.name}: compiling', flush=True)
    impls = [f'jax {ops}' for ops in ops_sets]
    if case.model == TORCH_TOPOLOGY:
      impls += [f'torch {mode}' for mode in torch_modes]
    runners = [make_runner(case, impl, compiler_options) for impl in impls]
    time_interleaved(runners, args.repeats, args.warmup, args.lead_in)
    rows = case_rows(case, runners, ceilings[case.dtype], peaks.get(case.dtype))
    del runners  # free their memory before the fresh-process runs
    for r in rows:
      if args.startup:
        r.update(probe_in_fresh_process(case, r['impl'], args.fast_compile))
      print(f"  {r['impl']:14s} {r['images_per_s']:8.1f} images/s "
            f"({r['images_per_s_min']:.1f}–{r['images_per_s_max']:.1f}), compile "
            f"{r['compile_s']:.1f} s, {r['gflops']:.0f} GFLOP/s", flush=True)
    results += rows
  device = jax.devices()[0]
  report = dict(date=datetime.date.today().isoformat(),
                device=cpu_model() if device.platform == 'cpu' else device.device_kind,
                platform=device.platform, threads=threads(), jax=jax.__version__,
                torch=torch.__version__ if torch_modes else None,
                glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''), ceilings=ceilings,
                peak_tflops=peaks,
                results=results, ratios=ratio_rows(results))
  _write_report(report, format_markdown(report), args.output)
  return report


def run_input_benchmark(args: argparse.Namespace) -> dict[str, Any]:
  """Images/s of training and evaluation preprocessing (`throughput`), written as .md and .json.

  Without `args.image_folder`, times a folder of `args.num_images` photo-like JPEGs
  (`photo_folder`) written to a temporary directory.
  """
  # Imported here: they load TensorFlow, which the model benchmark does without and
  # which must come after torch (see cli.main).
  # pylint: disable-next=import-outside-toplevel
  from inception_jax.data import photo_folder, pipeline, throughput
  pipeline.hide_gpus_from_tensorflow()
  if args.compare == 'torchvision':
    _import_torch()
  with tempfile.TemporaryDirectory() as scratch:
    root = args.image_folder or photo_folder.write_photo_folder(scratch, args.num_images)
    config = config_lib.get_base_config()
    config.update(dict(dataset='image_folder', image_folder=root, train_split='train',
                       eval_split='train', image_size=args.image_size,
                       batch_size=args.batch_size, eval_batch_size=args.batch_size))
    paths = throughput.image_paths(config, 'train')
    warmup = 2
    batches = len(paths) // args.batch_size - warmup
    if batches < 1:
      raise errors.UserError(
          f'{root}/train holds {len(paths)} images, too few for {warmup + 1} batches of '
          f'{args.batch_size}; give a larger folder or a smaller --batch-size.')
    starters = {f'ours {kind}': throughput.ours(config, kind) for kind in ('train', 'eval')}
    if args.compare == 'torchvision':
      starters.update({f'torchvision {kind}': throughput.torchvision_loader(
          config, kind, threads()) for kind in ('train', 'eval')})
    timings = {name: functools.partial(throughput.time_stream, start, warmup, batches)
               for name, start in starters.items()}
    timings['PIL per core'] = throughput.pil_bound(paths[:warmup * args.batch_size],
                                                   args.image_size)
    results = throughput.time_interleaved(timings, args.repeats)
  rates = {name: [wall for wall, _ in r] for name, r in results.items()}
  per_cpu_s = {name: [cpu for _, cpu in r] for name, r in results.items()}
  report = dict(date=datetime.date.today().isoformat(), device=cpu_model(), threads=threads(),
                load_average=os.getloadavg()[0],
                command=' '.join(['python -m inception_jax', *sys.argv[1:]]),
                image_folder=args.image_folder or f'generated: {args.num_images} photo-like '
                'JPEGs (inception_jax/data/photo_folder.py)',
                num_images=len(paths), image_size=args.image_size, batch_size=args.batch_size,
                timed_batches=batches, rounds=args.repeats,
                images_per_s={name: throughput.summary(r) for name, r in rates.items()},
                images_per_cpu_s={name: throughput.summary(r) for name, r in per_cpu_s.items()},
                per_round=dict(images_per_s=rates, images_per_cpu_s=per_cpu_s))
  for kind in ('train', 'eval'):
    report[f'{kind}_images_per_s'] = report['images_per_s'][f'ours {kind}']['median']
  # One process of PIL: per CPU-second, one free core's rate, whatever the load.
  pil = report['images_per_cpu_s']['PIL per core']['median']
  report['pil_bound_images_per_s'] = pil * threads()
  report['of_pil_bound'] = {kind: report['images_per_cpu_s'][f'ours {kind}']['median'] / pil
                            for kind in ('train', 'eval')}
  if args.compare == 'torchvision':
    report['torchvision'] = {f'{kind}_images_per_s': report['images_per_s'][
        f'torchvision {kind}']['median'] for kind in ('train', 'eval')}
    report['ratios'] = {f'{kind}{unit}': statistics.median(
        o / t for o, t in zip(series[f'ours {kind}'], series[f'torchvision {kind}']))
                        for kind in ('train', 'eval')
                        for unit, series in (('', rates), ('_per_cpu_s', per_cpu_s))}
  _write_report(report, format_input_markdown(report), args.output)
  return report


def format_input_markdown(report: dict[str, Any]) -> str:
  """The input-pipeline report as Markdown: a header line and one row per stream."""
  lines = [f"Input pipeline, {report['date']}, {report['device']}, {report['threads']} "
           f"threads (load average {report['load_average']:.1f} at the end); "
           f"{report['image_folder']}; {report['image_size']} px, batch "
           f"{report['batch_size']}, {report['timed_batches']} batches timed per round, "
           f"{report['rounds']} interleaved rounds. `{report['command']}`", '',
           '| stream | images/s median (min–max) | images per CPU-second median (min–max) |',
           '|---|---:|---:|']
  for name, wall in report['images_per_s'].items():
    cpu = report['images_per_cpu_s'][name]
    lines.append(f"| {name} | {wall['median']:.0f} ({wall['min']:.0f}–{wall['max']:.0f}) | "
                 f"{cpu['median']:.0f} ({cpu['min']:.0f}–{cpu['max']:.0f}) |")
  bound = report['of_pil_bound']
  lines += ['', f"PIL bound (its images per CPU-second × {report['threads']} threads): "
            f"{report['pil_bound_images_per_s']:.0f} images/s; ours per CPU-second over "
            f"PIL's: train {bound['train']:.2f}, eval {bound['eval']:.2f}."]
  if 'ratios' in report:
    r = report['ratios']
    lines.append(f"Ours / torchvision (median of per-round ratios): images/s train "
                 f"{r['train']:.2f}×, eval {r['eval']:.2f}×; per CPU-second train "
                 f"{r['train_per_cpu_s']:.2f}×, eval {r['eval_per_cpu_s']:.2f}×.")
  return '\n'.join(lines)


def _write_report(report: dict[str, Any], markdown: str, output: str) -> None:
  """Prints `markdown` and writes it to OUTPUT.md, and `report` to OUTPUT.json."""
  path = pathlib.Path(output)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.with_suffix('.md').write_text(markdown + '\n')
  path.with_suffix('.json').write_text(json.dumps(report, indent=1) + '\n')
  print(markdown)
  print(f"wrote {path.with_suffix('.md')} and {path.with_suffix('.json')}")
