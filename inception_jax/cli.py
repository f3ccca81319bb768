"""The command line: `python -m inception_jax <command> [options]`."""

import argparse
import json
import pathlib
import sys
from typing import Callable, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

Command = Callable[[argparse.Namespace], None]
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'configs'
DEFAULT_CONFIG = CONFIGS / 'default.py'


def load_config(path: str | pathlib.Path, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Loads a `get_config()` file and applies `--config.field=value` overrides.

  Raises SystemExit with a message naming an unknown field or a bad value.
  """
  if not pathlib.Path(path).exists():
    raise SystemExit(f'config file {path} not found; the experiment configs live in {CONFIGS}.')
  bad = [o for o in overrides if not o.startswith('--config.')]
  if bad:
    raise SystemExit(f'unrecognized arguments {bad}: config fields are set as '
                     '--config.<field>=<value>.')
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', str(path), flag_values=flag_values,
                                  lock_config=True)
  try:
    flag_values(['inception_jax', *overrides])
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    raise SystemExit(f'bad config override in {list(overrides)}: {e}') from e
  return flag_values.config


def _train(args: argparse.Namespace) -> None:
  from inception_jax import trainer  # pylint: disable=import-outside-toplevel
  config = load_config(args.config, args.overrides)
  workdir = args.workdir or str(pathlib.Path('workdirs') / pathlib.Path(args.config).stem)
  print(f'config {args.config}; work directory {pathlib.Path(workdir).absolute()}', flush=True)
  try:
    trainer.train_and_evaluate(config, workdir)
  except trainer.Preempted:
    sys.exit(0)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
  p = subparsers.add_parser(
      'train', help='train and evaluate (resumes from the work directory\'s newest checkpoint)',
      epilog='Any config field can be overridden: --config.batch_size=128.')
  p.add_argument('--config', default=str(DEFAULT_CONFIG),
                 help='a get_config() file (default: experiments/configs/default.py)')
  p.add_argument('--workdir', help='checkpoints, logs and curves (default: workdirs/<config>)')
  p.set_defaults(run=_train)


def _summary(args: argparse.Namespace) -> None:
  from inception_jax import models, summary  # pylint: disable=import-outside-toplevel
  model = models.create_model(args.model, num_classes=args.num_classes)
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
  from inception_jax import models  # pylint: disable=import-outside-toplevel
  p = subparsers.add_parser('summary', help="per-layer shapes, parameters and multiply-adds "
                            "(the paper's Table 1) computed from the model")
  p.add_argument('--model', default='googlenet', choices=sorted(models.MODELS))
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--num-classes', type=int, default=1000)
  p.add_argument('--json', metavar='PATH', help='also write the rows as JSON')
  p.set_defaults(run=_summary)


def build_parser() -> argparse.ArgumentParser:
  """The parser with one sub-command per job."""
  parser = argparse.ArgumentParser(prog='python -m inception_jax', description=__doc__)
  subparsers = parser.add_subparsers(dest='command', required=True)
  _add_summary(subparsers)
  _add_train(subparsers)
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  """Parses `argv` (default: sys.argv[1:]) and runs the chosen command."""
  args, overrides = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
  args.overrides = overrides
  if overrides and not hasattr(args, 'config'):
    raise SystemExit(f'unrecognized arguments: {overrides}')
  args.run(args)
