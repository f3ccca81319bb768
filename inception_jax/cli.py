"""The command line: `python -m inception_jax <command> [options]`."""

import argparse
import json
import sys
from typing import Callable, Sequence

Command = Callable[[argparse.Namespace], None]


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
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  """Parses `argv` (default: sys.argv[1:]) and runs the chosen command."""
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  args.run(args)
