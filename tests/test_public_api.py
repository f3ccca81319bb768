"""The package's public Python API: the README's example runs as written."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

import inception_jax
from inception_jax import config as config_lib
from helpers import make_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
  text = (ROOT / 'README.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
  assert len(blocks) == 1, 'the README shows one Python example'
  return blocks[0]


def test_importing_the_package_loads_neither_jax_nor_tensorflow():
  code = ('import sys, inception_jax; print(inception_jax.__version__); '
          "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))")
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=60, check=True, cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)})
  assert done.stdout.split('\n')[:2] == [inception_jax.__version__, '[]']
  assert sorted(inception_jax.__all__) == sorted(dir(inception_jax))
  with pytest.raises(AttributeError, match='no attribute'):
    inception_jax.train_and_evaluate  # pylint: disable=pointless-statement


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, digits_data_dir, monkeypatch, capsys):
  config = config_lib.load('default', [f'--config.data_dir={digits_data_dir}'])
  make_run(tmp_path / 'workdirs' / 'default', config)
  digit = np.zeros((8, 8), np.uint8)
  digit[1:7, 3:5] = 255  # a one, drawn as the embedded digits are (white on black)
  Image.fromarray(digit).convert('RGB').save(tmp_path / 'digit.png')
  monkeypatch.chdir(tmp_path)
  namespace: dict = {}
  exec(compile(readme_python_example(), 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  predictions, skipped = namespace['predictions'], namespace['skipped']
  assert skipped == {} and len(predictions) == 1
  assert set(predictions[0].names) <= set(namespace['predictor'].class_names)
  assert printed == f'{predictions[0].names[:3]} {predictions[0].probabilities[:3]}\n'
  features = namespace['features']
  assert features['pooled'].shape == (2, 1024)
  assert set(features) >= {'inception_3a', 'inception_5b', 'pooled'}
