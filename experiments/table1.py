"""Table 1 reproduced: parameters and multiply-adds per layer from the model, beside the paper's.

  python -m experiments.table1 [--out experiments/results/table1.md]

Counts come from `inception_jax.model.summary` (shapes by `jax.eval_shape`, no compute).
The paper's columns are read from tests/data/paper_table1.csv (a copy of Table 1).
"""

import argparse
import csv
import pathlib

from inception_jax.model import googlenet, summary

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_TABLE = ROOT / 'tests' / 'data' / 'paper_table1.csv'
NOTES = {
    'conv1': "paper's 34M is a misprint: 112·112·64 outputs × 7·7·3 = 118M",
    'inception_4c': 'paper params 463K; exact weights/1024 = 497K',
    'inception_5a': "paper's 54M is a misprint of 51.1M; params 1072K; exact weights/1024 = 1018K",
    'inception_5b': 'paper params 1388K; exact weights/1024 = 1409K',
}


def paper_rows() -> dict[str, dict[str, str]]:
  """Table 1's rows that carry parameters, keyed by this model's layer names."""
  with open(PAPER_TABLE) as f:
    rows = list(csv.DictReader(line for line in f if not line.startswith('#')))
  named = {}
  for row in rows:
    if row['type'].startswith('inception'):
      named['inception_' + row['type'][len('inception ('):-1]] = row
    elif row['type'] == 'convolution':
      named['conv1' if row['patch_size_stride'] == '7x7/2' else 'conv2'] = row
    elif row['type'] == 'linear':
      named['classifier'] = row
  return named


def table() -> str:
  """The comparison as Markdown."""
  rows = {r.name: r for r in summary.layer_table(googlenet.create_model('googlenet'), 224)}
  totals = summary.totals(list(rows.values()))
  rows['conv2'] = summary.LayerRow('conv2', 'ConvReLU', rows['conv2'].output_shape,
                                   rows['conv2_reduce'].params + rows['conv2'].params,
                                   rows['conv2_reduce'].macs + rows['conv2'].macs)
  lines = ['| layer | output | params (model) | params (paper) | multiply-adds (model) '
           '| ops (paper) | note |', '|---|---|---:|---:|---:|---:|---|']
  for name, ref in paper_rows().items():
    r = rows[name]
    shape = 'x'.join(map(str, r.output_shape))
    lines.append(f"| {name} | {shape} | {r.params:,} | {ref['paper_params']} | "
                 f"{r.macs / 1e6:,.1f}M | {ref['paper_ops']} | {NOTES.get(name, '')} |")
  lines.append(f"| total (no aux) | | {totals['params']:,} | | {totals['macs'] / 1e9:.3f}G | | |")
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', type=pathlib.Path,
                      default=ROOT / 'experiments' / 'results' / 'table1.md')
  args = parser.parse_args()
  text = table()
  print(text)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(text + '\n')
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
