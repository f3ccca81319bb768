"""Published weights to your own photographs, as a user runs it, offline: convert, fine-tune,
evaluate, predict, export, and the export loaded with jax alone.

The photographs are scikit-learn's two sample images (china.jpg, flower.jpg), cut into a
3-class image folder; the weights are a random-init torchvision GoogLeNet saved with torch
and a bvlc_googlenet caffemodel written here, so every number is checked against the
files the test made, never against the code's own earlier output.
"""

import json
import pathlib
import re
import shlex

import jax
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sklearn_datasets

from inception_jax import cli
from inception_jax.model import googlenet
from inception_jax.training import checkpointing
from inception_jax.training import finetune
from helpers import convert_cli
from test_convert_caffe import caffe_blobs, caffemodel  # noqa: F401  pylint: disable=unused-import

SIDE = 256  # evaluation resizes the shorter side to 224 * 256/224: these images stay as they are
CROP = (SIDE - 224) // 2
CLASSES = ('china_sky', 'china_town', 'flower')  # sorted: folder names are the classes


def _cuts(photo: np.ndarray, rows: slice, count: int, seed: int) -> list[np.ndarray]:
  """`count` SIDE x SIDE squares from `rows` of a photograph, at random columns."""
  rng = np.random.default_rng(seed)
  region = photo[rows]
  tops = rng.integers(0, region.shape[0] - SIDE + 1, count)
  lefts = rng.integers(0, region.shape[1] - SIDE + 1, count)
  return [region[t:t + SIDE, l:l + SIDE] for t, l in zip(tops, lefts)]


def write_photos(root: pathlib.Path, train_per_class: int) -> pathlib.Path:
  """ROOT/{train,test}/<class>/*.png cut from the photographs: 1 test image per class, lossless."""
  china, flower = sklearn_datasets.load_sample_images().images  # 427 x 640 RGB
  sources = {'china_sky': (china, slice(0, SIDE)), 'china_town': (china, slice(171, 427)),
             'flower': (flower, slice(0, 427))}
  for seed, (name, (photo, rows)) in enumerate(sources.items()):
    for i, image in enumerate(_cuts(photo, rows, train_per_class + 1, seed)):
      split = 'test' if i == train_per_class else 'train'
      (root / split / name).mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(root / split / name / f'{i}.png')
  return root


@pytest.fixture(scope='module')
def photos(tmp_path_factory) -> pathlib.Path:
  return write_photos(tmp_path_factory.mktemp('photos'), 2)


def save_torchvision_googlenet(path: pathlib.Path) -> None:
  """A random-init torchvision GoogLeNet state dict, aux heads included, as torch saves one."""
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  torch.manual_seed(0)
  torch.save(torchvision.models.googlenet(weights=None, aux_logits=True,
                                          init_weights=False).state_dict(), path)


@pytest.fixture(scope='module')
def converted(tmp_path_factory, caffe_blobs) -> dict[str, pathlib.Path]:  # noqa: F811
  """Run directories converted from a torchvision state dict and a caffemodel made here."""
  root = tmp_path_factory.mktemp('weights')
  save_torchvision_googlenet(root / 'tv.pth')
  (root / 'bvlc.caffemodel').write_bytes(caffemodel(caffe_blobs))
  convert_cli('torchvision', str(root / 'tv.pth'), str(root / 'tv_run'))
  convert_cli('caffe', str(root / 'bvlc.caffemodel'), str(root / 'caffe_run'))
  return {'torchvision': root / 'tv_run', 'caffe': root / 'caffe_run'}


def _train(source: pathlib.Path, photos: pathlib.Path, workdir: pathlib.Path,
           *extra: str) -> None:
  """`train --config finetune` from `source`, as the docs give it, cut to one tiny step."""
  cli.main(['train', '--config', 'finetune', '--workdir', str(workdir),
            f'--config.init_from={source}', f'--config.image_folder={photos}',
            '--config.batch_size=2', '--config.eval_batch_size=3', '--config.num_train_steps=1',
            '--config.compilation_cache=False', *extra])


def _leaves(path: pathlib.Path) -> dict[str, np.ndarray]:
  state = checkpointing.load_raw(path).state
  return {f'{kind}/{name}': np.asarray(leaf) for kind in ('params', 'batch_stats')
          for name, leaf in googlenet.named_leaves(state.get(kind, {})).items()}


def _is_head(name: str) -> bool:
  return bool(re.search(finetune.CLASSIFIER_PATTERN, name.split('/', 1)[1]))


@pytest.mark.slow
@pytest.mark.parametrize('source, frozen', [('torchvision', True), ('caffe', False)])
def test_converted_weights_fine_tune_evaluate_predict_and_export(converted, photos, tmp_path,
                                                                 source, frozen, capsys):
  run = tmp_path / 'tuned'
  _train(converted[source], photos, run, f'--config.freeze_backbone={frozen}')
  assert f'init_from {converted[source]}: took its ' in capsys.readouterr().out
  tuned, original = (json.loads((d / 'config.json').read_text()) for d in (run, converted[source]))
  for field in ('model', 'image_size', 'mean_rgb', 'std_rgb', 'eval_resize_ratio'):
    assert tuned[field] == original[field], field
  assert tuned['model_options']['width'] == original['model_options']['width']
  before, after = _leaves(converted[source]), _leaves(run)
  heads = {name for name in after if _is_head(name)}
  assert heads and all(after[name].shape[-1] == len(CLASSES) for name in heads
                       if name.endswith('bias'))
  backbone = sorted(set(after) - heads)
  assert backbone == sorted(set(before) - {n for n in before if _is_head(n)})
  changed = [name for name in backbone if not np.array_equal(before[name], after[name])]
  if frozen:
    assert changed == []  # every backbone tensor, BatchNorm statistics included
  else:
    assert changed  # the full fine-tune moved the backbone

  cli.main(['evaluate', str(run), '--json', str(tmp_path / 'eval.json')])
  evaluated = json.loads((tmp_path / 'eval.json').read_text())['models'][0]
  test_images = sorted((photos / 'test').glob('*/*.png'))
  cli.main(['predict', str(run), *map(str, test_images), '--top-k', '1',
            '--json', str(tmp_path / 'predict.json')])
  predicted = json.loads((tmp_path / 'predict.json').read_text())['predictions']
  cli.main(['export', str(run), str(tmp_path / 'model.jax')])

  exported = jax.export.deserialize((tmp_path / 'model.jax').read_bytes())
  pixels = np.stack([np.asarray(Image.open(p))[CROP:CROP + 224, CROP:CROP + 224]
                     for p in test_images])
  logits = np.asarray(exported.call(pixels), np.float64)
  assert logits.shape == (3, len(CLASSES))
  log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  labels = np.arange(3)  # one test image per class, in sorted class order
  assert evaluated['count'] == 3
  assert evaluated['loss'] == pytest.approx(-log_probs[labels, labels].mean(), rel=1e-4)
  assert evaluated['top1'] == pytest.approx(np.mean(logits.argmax(1) == labels))
  for row, image in zip(log_probs, predicted):
    assert image['names'][0] == CLASSES[int(row.argmax())]
    assert image['probabilities'][0] == pytest.approx(np.exp(row.max()), rel=1e-4)


def documented_commands() -> list[str]:
  """The command lines of docs/training.md's fine-tuning example, as written there."""
  text = (pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'training.md').read_text()
  section = text.split('## Fine-tuning', 1)[1]
  return section.split('```bash\n', 1)[1].split('```', 1)[0].strip().splitlines()


@pytest.mark.slow
def test_the_documented_fine_tuning_commands_run_as_written(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  save_torchvision_googlenet(tmp_path / 'googlenet.pth')
  write_photos(tmp_path / 'photos', 6)  # 18 photographs: one step of the recipe's batch of 16
  commands = documented_commands()
  assert len(commands) == 4
  for command in commands:
    argv = shlex.split(command)
    assert argv[:3] == ['python', '-m', 'inception_jax'], command
    cli.main(argv[3:])
  out = capsys.readouterr().out
  assert 'init_from tv_run: took its model=googlenet_bn, ' in out
  assert json.loads((tmp_path / 'tuned' / 'config.json').read_text())['model'] == 'googlenet_bn'
  assert out.count('photos/test/') == 3  # predict: one line per test photograph
