"""The command line: `python -m inception_jax <command> [options]`.

Output: progress, results and what a run resumed or re-initialized are printed to
stdout; warnings (bad images, damaged checkpoints, options left out) go through
absl logging to stderr, whose default level (WARNING) keeps the libraries' INFO
lines out. Process-wide settings (log levels, huge pages, TensorFlow kept off the GPUs) are
made here, at the program's start, never when a module is imported.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any, Callable, Sequence

import inception_jax
from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax import host_memory
from inception_jax.training import preemption

# These run TensorFlow.
DATA_COMMANDS = ('train', 'evaluate', 'predict', 'export', 'convert', 'prepare')


def _train(args: argparse.Namespace) -> None:
  from inception_jax import compilation_cache  # pylint: disable=import-outside-toplevel
  from inception_jax import paths  # pylint: disable=import-outside-toplevel
  from inception_jax.training import loop  # pylint: disable=import-outside-toplevel
  config = _inherit_init_from(config_lib.load(args.config, args.overrides), args.overrides)
  workdir = args.workdir or str(pathlib.Path('workdirs') / pathlib.Path(args.config).stem)
  print(f'config {args.config}; work directory {paths.as_path(workdir)}', flush=True)
  if config.compilation_cache:
    compilation_cache.use_persistent_cache(compilation_cache.directory_for(workdir))
  try:
    loop.train_and_evaluate(config, workdir, args.preemption_watch)
  except loop.Preempted:
    sys.exit(0)


def _inherit_init_from(config: Any, overrides: Sequence[str]) -> Any:
  """`config` with its `init_from` run's architecture and preprocessing, but not the overrides'."""
  if not config.init_from:
    return config
  from inception_jax.training import finetune  # pylint: disable=import-outside-toplevel
  config, taken = finetune.inherit_source(config, config_lib.override_fields(overrides))
  if taken:
    print(f'init_from {config.init_from}: took its '
          + ', '.join(f'{name}={value}' for name, value in taken.items())
          + ' (set a field on the command line to keep your own)', flush=True)
  return config


def _add_train(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
      'train', help='train and evaluate (resumes from the work directory\'s newest checkpoint)',
      epilog='Any config field can be overridden: --config.batch_size=128.')
  p.add_argument('--config', default='default',
                 help="a shipped config's name (%s) or a get_config() file (default: "
                 'default)' % ', '.join(config_lib.shipped_configs()))
  p.add_argument('--workdir', help='checkpoints, logs and curves: a local folder or a URI '
                 'such as gs://bucket/run (default: workdirs/<config>)')
  p.set_defaults(run=_train)


def _evaluate(args: argparse.Namespace) -> None:
  from inception_jax.serving import evaluation  # pylint: disable=import-outside-toplevel
  from inception_jax.training import rundir
  run_paths = [args.path, *args.ensemble]
  configs = [config_lib.load(rundir.load_config(rundir.workdir_of(p)), args.overrides)
             for p in run_paths]
  report = evaluation.evaluate_paths(run_paths, args.crops, configs)
  print(evaluation.format_report(report))
  if args.json:
    from inception_jax import paths  # pylint: disable=import-outside-toplevel
    paths.as_path(args.json).write_text(json.dumps(report, indent=1))
    print(f'wrote {args.json}')


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
      'evaluate', help='top-1/top-5 and loss of a checkpoint (or an ensemble) on the eval split',
      epilog='Config fields of the saved run can be overridden: --config.data_dir=/data.')
  p.add_argument('path', help='a work directory, its checkpoints/ folder or one step folder')
  p.add_argument('--crops', type=int, default=1, choices=config_lib.CROPS,
                 help="crops per image, as in the paper's Table 3")
  p.add_argument('--ensemble', nargs='+', default=[], metavar='PATH',
                 help='more models whose softmax outputs are averaged with the first')
  p.add_argument('--json', metavar='PATH', help='also write the results as JSON')
  p.set_defaults(run=_evaluate, config=None)


def _plot(args: argparse.Namespace) -> None:
  from inception_jax.training import metric_logging  # pylint: disable=import-outside-toplevel
  print(f'wrote {metric_logging.plot_curves(args.workdir)}')


def _add_plot(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser('plot', help="draw a run's loss, accuracy and learning-rate "
                            'curves into WORKDIR/curves.png (also during training)')
  p.add_argument('workdir')
  p.set_defaults(run=_plot)


def _summary(args: argparse.Namespace) -> None:
  from inception_jax.model import googlenet, summary  # pylint: disable=import-outside-toplevel
  model = googlenet.create_model(args.model, num_classes=args.num_classes)
  rows = summary.layer_table(model, args.image_size)
  print(f'{args.model} at {args.image_size}x{args.image_size}, {args.num_classes} classes; '
        'multiply-adds counted from the convolutions and dense layers, per image.')
  print(summary.format_table(rows))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump([dict(name=r.name, kind=r.kind, output_shape=list(r.output_shape),
                      params=r.params, macs=r.macs) for r in rows], f, indent=1)
    print(f'wrote {args.json}')


def _add_summary(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser('summary', help="per-layer shapes, parameters and multiply-adds "
                            "(the paper's Table 1) computed from the model")
  p.add_argument('--model', default='googlenet',
                 help='a model name, e.g. googlenet, googlenet_bn (an unknown one lists them)')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--num-classes', type=int, default=1000)
  p.add_argument('--json', metavar='PATH', help='also write the rows as JSON')
  p.set_defaults(run=_summary)


def _run(module: str, function: str) -> Callable[[argparse.Namespace], Any]:
  """A command's action: `inception_jax.<module>.<function>(args)`.

  The module (and the TensorFlow, JAX or torch it imports) loads only when the
  command runs, so that parsing and --help stay light.
  """
  def run(args: argparse.Namespace) -> Any:
    return getattr(importlib.import_module(f'inception_jax.{module}'), function)(args)
  return run


def _add_benchmark(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
      'benchmark', help='images/s, compile time, memory and GFLOP/s of inference and '
      'training steps, optionally interleaved with torchvision',
      description='Times inference and training steps of each implementation in '
      'interleaved rounds; compare the ratios within one run (docs/performance.md).')
  p.add_argument('--models', default='googlenet_bn,googlenet',
                 help='comma-separated model names (torch runs beside googlenet_bn)')
  p.add_argument('--cases', default='infer:1:224,infer:8:224,infer:32:224,train:32:224,'
                 'train:128:64', help='comma-separated kind:batch:size, kind infer or train')
  p.add_argument('--dtypes', default='float32,bfloat16', help='compute dtypes')
  p.add_argument('--ops', default='xla,fast',
                 help="JAX kernel sets to time side by side: 'xla', 'fast' (inception_jax.model.ops)")
  p.add_argument('--compare', choices=('none', 'torchvision'), default='none',
                 help='also time torchvision.models.googlenet, interleaved')
  p.add_argument('--torch-modes', default='eager,compile',
                 help="torch implementations: 'eager' and/or 'compile' (both channels_last)")
  p.add_argument('--peak-tflops', default=None,
                 help="the device's dense peak TFLOP/s per dtype from its spec sheet, "
                 "'dtype=TFLOPS,...' (e.g. bfloat16=989 for an H100 SXM); rows of those "
                 'dtypes then also give MFU, the achieved FLOP/s over that peak')
  p.add_argument('--repeats', type=int, default=5, help='timed rounds per case')
  p.add_argument('--warmup', type=int, default=1, help='untimed runs after compiling')
  p.add_argument('--lead-in', type=int, default=1,
                 help='untimed runs of the same implementation right before each timed one')
  p.add_argument('--startup', action='store_true',
                 help='also run each implementation in a fresh process for its start-up '
                 'time and peak memory')
  p.add_argument('--fast-compile', action='store_true',
                 help='compile with XLA backend optimizations off (smoke tests only)')
  p.add_argument('--output', default='workdirs/benchmark',
                 help='writes OUTPUT.md and OUTPUT.json')
  p.add_argument('--input-pipeline', action='store_true',
                 help='time the input pipeline instead: images/s of training and evaluation '
                 'preprocessing as the step receives them (with --compare torchvision, '
                 "beside torchvision's DataLoader); --repeats rounds")
  p.add_argument('--image-folder', default='',
                 help='--input-pipeline: a folder with a train/<class>/<image> split '
                 '(default: generated photo-like JPEGs)')
  p.add_argument('--num-images', type=int, default=1024,
                 help='--input-pipeline: how many JPEGs to generate without --image-folder')
  p.add_argument('--image-size', type=int, default=224, help='--input-pipeline: crop size')
  p.add_argument('--batch-size', type=int, default=64, help='--input-pipeline: batch size')
  p.set_defaults(run=_run('benchmark', 'run_benchmark'))


def _batch_sizes(text: str) -> tuple[int, ...]:
  try:
    sizes = tuple(int(b) for b in text.split(','))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f'{text!r}: give comma-separated batch sizes') from e
  if min(sizes) < 1:
    raise argparse.ArgumentTypeError(f'{text!r}: batch sizes must be positive')
  return sizes


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser('predict', help='top-k classes of image files (or folders of '
                            'them) from a checkpoint')
  p.add_argument('path', help='a work directory, its checkpoints/ folder or one step folder')
  p.add_argument('images', nargs='+', help='image files and folders (searched recursively)')
  p.add_argument('--crops', type=int, default=1, choices=config_lib.CROPS,
                 help='1: the centre crop; 10: corners, centre and mirrors; 144: the '
                 "paper's 4 scales x 3 squares x 6 crops x 2 mirrors; averaged")
  p.add_argument('--top-k', type=int, default=5, help='classes shown per image')
  p.add_argument('--buckets', type=_batch_sizes,
                 help='batch sizes the forward is compiled for (default 1,8,32,128)')
  p.add_argument('--json', metavar='PATH', help='also write the results as JSON')
  p.set_defaults(run=_run('serving.inference', 'predict_command'))
  p.intermixed = True


def _add_export(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser('export', help='write a self-contained jax.export artifact '
                            '(weights baked in, any batch size) and a JSON description')
  p.add_argument('path', help='a work directory, its checkpoints/ folder or one step folder')
  p.add_argument('out', help='the artifact file to write (its description goes to OUT.json)')
  p.add_argument('--input', choices=('float', 'uint8'), default='uint8',
                 help='uint8: raw RGB pixels, normalized inside (default); float: images '
                 'already normalized with the run\'s mean_rgb/std_rgb')
  p.add_argument('--image-size', type=int,
                 help="the artifact's input height and width (default: the run's)")
  p.add_argument('--saved-model', metavar='DIR',
                 help='also write a TensorFlow SavedModel of the same function (jax2tf)')
  p.set_defaults(run=_run('serving.export', 'export_command'))


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
      'convert', help='turn torchvision or BVLC Caffe GoogLeNet weights into a run directory '
      '(for evaluate, predict, export, init_from)',
      description='Without a weights file, the official one is downloaded once, checked '
      'against its published checksum and cached in $INCEPTION_JAX_CACHE (default: '
      '$XDG_CACHE_HOME/inception_jax or ~/.cache/inception_jax), under weights/.')
  sources = p.add_subparsers(dest='source', required=True)
  tv = sources.add_parser('torchvision', help='torchvision.models.googlenet state dict '
                          '(.pth) -> googlenet_bn')
  tv.add_argument('weights', nargs='?', metavar='WEIGHTS',
                  help='a .pth file holding the state dict (default: torchvision\'s official '
                  'googlenet-1378be20.pth, downloaded once into the cache)')
  tv.add_argument('out', metavar='OUT', help='the run directory to write')
  tv.add_argument('--transform-input', action=argparse.BooleanOptionalAction, default=True,
                  help='the weights were trained with transform_input=True, as torchvision\'s '
                  'pretrained ones (default); sets the input normalization')
  tv.set_defaults(run=_run('serving.convert', 'torchvision_command'))
  tv.intermixed = True
  caffe = sources.add_parser('caffe', help='bvlc_googlenet .caffemodel -> googlenet')
  caffe.add_argument('caffemodel', nargs='?', metavar='CAFFEMODEL',
                     help="a .caffemodel file (default: BVLC's bvlc_googlenet.caffemodel, "
                     'downloaded once into the cache)')
  caffe.add_argument('out', metavar='OUT', help='the run directory to write')
  caffe.set_defaults(run=_run('serving.convert', 'caffe_command'))
  caffe.intermixed = True


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
      'prepare', help='download and prepare a tfds data set once (what a multi-process run '
      'needs done beforehand)')
  p.add_argument('name', help='a tfds data set name, e.g. cifar10 or imagenette')
  p.add_argument('--data_dir', default='',
                 help='the tfds data_dir to prepare it in (default: ~/tensorflow_datasets)')
  p.add_argument('--manual_dir', default='',
                 help='where files you downloaded yourself are (e.g. the ImageNet tars)')
  p.set_defaults(run=_run('data.tfds_source', 'prepare_command'))


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose commands marked `intermixed` take options between their files.

  argparse alone stops filling a command's positionals at the first option, so
  `predict RUN a.png --top-k 3 b.png` would leave b.png over. Commands that take config
  overrides (`--config.batch_size 128`, a value after a space) keep argparse's order.
  """
  intermixed = False
  _parsing = False

  def parse_known_args(self, args=None, namespace=None):
    if not self.intermixed or self._parsing:  # parse_known_intermixed_args calls back here
      return super().parse_known_args(args, namespace)
    self._parsing = True
    try:
      return self.parse_known_intermixed_args(args, namespace)
    finally:
      self._parsing = False


def _prog() -> str:
  """How the user started us: the installed script, or the module."""
  script = os.path.basename(sys.argv[0])
  return script if script == 'inception-jax' else 'python -m inception_jax'


def build_parser() -> argparse.ArgumentParser:
  """The parser with one sub-command per job."""
  parser = _Parser(prog=_prog(), description=__doc__)
  parser.add_argument('--version', action='version',
                      version=f'%(prog)s {inception_jax.__version__}')
  subparsers = parser.add_subparsers(dest='command', required=True)
  _add_summary(subparsers)
  _add_train(subparsers)
  _add_evaluate(subparsers)
  _add_plot(subparsers)
  _add_benchmark(subparsers)
  _add_predict(subparsers)
  _add_export(subparsers)
  _add_convert(subparsers)
  _add_prepare(subparsers)
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  """Parses `argv` (default: sys.argv[1:]) and runs the chosen command."""
  if importlib.util.find_spec('gcsfs') is not None:
    # gs:// paths (work directories, tfds metadata) go through fsspec/gcsfs, the tested
    # route, rather than TensorFlow's GCS client; without gcsfs epath keeps TensorFlow's.
    # etils reads this once, at the process's first path operation: set it before any.
    os.environ.setdefault('EPATH_USE_TF', 'false')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow feeds data, quietly
  # TensorFlow only decodes, crops and resizes here, which its oneDNN rewrites do not
  # speed up; on CPUs where they default to on (AVX-512 VNNI, e.g. AMD Zen 4 and 5) its
  # notice about them reaches stderr whatever TF_CPP_MIN_LOG_LEVEL says.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if (argv is None and sys.argv[1:2] in (['train'], ['benchmark'])
      and host_memory.jax_runs_on_cpu()):
    # The process runs this command line alone: start it again with huge pages
    # for XLA's per-step CPU buffers (glibc reads the setting only at start-up). The
    # benchmark runs as training does, its torch peers under the same setting.
    host_memory.restart_with_huge_pages()
  whole_process = argv is None  # this process runs the command line alone, then exits
  argv = sys.argv[1:] if argv is None else list(argv)
  # A SIGTERM during the seconds of imports and set-up before training starts is
  # remembered (and, in a multi-process run, handed on to JAX once it listens).
  watch = preemption.PreemptionWatch() if argv[:1] == ['train'] else None
  if (argv[:1] == ['benchmark'] and not {'-h', '--help'} & set(argv)
      and importlib.util.find_spec('torchvision') is not None):
    # torch and torchvision (the optional peers of `benchmark --compare torchvision`)
    # must be imported before TensorFlow, which the data commands import: torchvision
    # loads triton, which segfaults once TensorFlow is loaded.
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    import torchvision  # pylint: disable=import-outside-toplevel,unused-import
  args, overrides = build_parser().parse_known_args(argv)
  args.overrides = overrides
  args.preemption_watch = watch
  if overrides and not hasattr(args, 'config'):
    raise SystemExit(f'unrecognized arguments: {overrides}')
  if args.command in DATA_COMMANDS:
    from inception_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    pipeline.hide_gpus_from_tensorflow()
  try:
    args.run(args)
  except errors.UserError as e:  # bad input: the message says what to do
    raise SystemExit(f'error: {e}') from None
  finally:
    if watch is not None and whole_process:
      watch.finish()
