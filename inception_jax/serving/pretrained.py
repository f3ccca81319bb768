"""`inception_jax.pretrained(name_or_path)`: published or trained weights in one Python call.

  import inception_jax
  net = inception_jax.pretrained('torchvision')   # or 'caffe', a .pth, a .caffemodel, a run
  logits = net.model.apply(net.variables, net.preprocessing.normalize(images),
                           train=False).logits  # images: uint8 [B, 224, 224, 3] RGB

The official files are fetched once, checked and cached (`weights.fetch`); a weights
file is converted in memory (`convert`), nothing is written; a run directory (or one
of its checkpoints) is read as `evaluate` reads it.
"""

import dataclasses
import pathlib
from typing import Any

import ml_collections
import numpy as np

from inception_jax import errors
from inception_jax import paths
from inception_jax.data import preprocessing
from inception_jax.model import googlenet
from inception_jax.serving import convert
from inception_jax.serving import evaluation
from inception_jax.serving import weights
from inception_jax.training import rundir

_TORCH_SUFFIXES = ('.pth', '.pt')
_CAFFE_SUFFIXES = ('.caffemodel',)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The inputs the weights expect: RGB images, shorter side resized, centre crop, normalized."""
  image_size: int  # the crop's height and width
  resize_side: int  # evaluation resizes the shorter side to this before the centre crop
  mean_rgb: tuple[float, ...]  # on the 0..255 scale
  std_rgb: tuple[float, ...]

  def normalize(self, images: Any) -> np.ndarray:
    """float32 model inputs of RGB pixels on 0..255 ([..., 3], e.g. uint8 [B, H, W, 3])."""
    return ((np.asarray(images, np.float32) - np.float32(self.mean_rgb))
            / np.float32(self.std_rgb))


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A model with eval-ready variables (`model.apply(variables, x, train=False)`)."""
  model: googlenet.GoogLeNet
  variables: dict[str, Any]
  preprocessing: Preprocessing
  class_names: tuple[str, ...]
  config: ml_collections.ConfigDict  # the run config they come with (for train, export, ...)


def pretrained(name_or_path: str | pathlib.Path) -> Pretrained:
  """The weights `name_or_path` names, their model and preprocessing.

  'torchvision' or 'caffe': the official files (downloaded once into the cache,
  checked); a `.pth` torchvision state dict (trained with `transform_input=True`, as
  torchvision's own) or a bvlc_googlenet `.caffemodel`; or a run directory, its
  checkpoints/ or one step folder. Raises `errors.UserError` saying what was wrong.
  """
  text = str(name_or_path)
  if text in weights.OFFICIAL:
    alternative = 'or pass the file: inception_jax.pretrained(PATH)'
    return _converted(weights.fetch(text, alternative=alternative), text)
  path = paths.as_path(text)
  if not path.exists():
    raise errors.NotFoundError(
        f'{text} is neither an official weight file ({", ".join(weights.OFFICIAL)}) nor an '
        'existing .pth, .caffemodel or run directory.')
  if text.endswith(_TORCH_SUFFIXES):
    return _converted(path, 'torchvision')
  if text.endswith(_CAFFE_SUFFIXES):
    return _converted(path, 'caffe')
  config = rundir.load_config(rundir.workdir_of(path))
  loaded = evaluation.load_model(path, config)
  return _pretrained(loaded.model, loaded.variables, config, tuple(loaded.meta['class_names']))


def _converted(path: paths.PathLike, source: str) -> Pretrained:
  """The weights of a torchvision or Caffe file, converted in memory."""
  config, variables = (convert.from_torchvision_file(path) if source == 'torchvision'
                       else convert.from_caffe_file(path))
  num_classes = int(variables['params']['classifier']['bias'].shape[0])
  model = rundir.build_model(config, num_classes)
  convert.check_fits(model, variables, config.image_size)
  return _pretrained(model, variables, config, convert.imagenet_class_names(num_classes))


def _pretrained(model: googlenet.GoogLeNet, variables: dict[str, Any],
                config: ml_collections.ConfigDict, class_names: tuple[str, ...]) -> Pretrained:
  prep = Preprocessing(
      image_size=config.image_size,
      resize_side=preprocessing.eval_side(config.image_size, config.eval_resize_ratio),
      mean_rgb=tuple(config.mean_rgb), std_rgb=tuple(config.std_rgb))
  return Pretrained(model=model, variables=variables, preprocessing=prep,
                    class_names=class_names, config=config)
