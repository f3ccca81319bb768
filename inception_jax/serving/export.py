"""`python -m inception_jax export`: a self-contained `jax.export` artifact of a checkpoint.

The artifact is the evaluation-mode forward pass with the weights baked in as
constants, serialized StableHLO lowered for CPU, CUDA and TPU, with a symbolic
batch dimension. Loading it needs only JAX, not this package:

  exported = jax.export.deserialize(open(path, 'rb').read())
  logits = exported.call(images)  # [b, num_classes] float32, any batch size b

Inputs (`input_kind`), NHWC RGB images of the run's image size (resized and
centre-cropped as evaluation does: shorter side to round(image_size *
eval_resize_ratio), centre crop):
  * 'uint8' (default): uint8 [b, H, W, 3] pixels; the run's mean_rgb/std_rgb
    normalization is inside the artifact.
  * 'float': float32 [b, H, W, 3] already normalized as (pixels - mean_rgb) / std_rgb.

Each platform's lowering computes with that platform's default kernel set and
dtype where the run left them at 'auto' (`platform_models`), whichever machine
exports. Next to the artifact, `<path>.json` records the input dtype, shape and
normalization, the output, the compute dtype per platform and the class names.

Optionally (`--saved-model DIR`) the same function is also written as a TensorFlow
SavedModel through `jax2tf` (signature 'serving_default': images -> {'logits'}),
for TensorFlow Serving or TF-only consumers.
"""

import argparse
import functools
import json
import pathlib
from typing import Any, Callable, Sequence

import jax
from jax import export as jax_export
from jax import lax
from jax.experimental import jax2tf
import jax.numpy as jnp
import tensorflow as tf

from inception_jax import errors
from inception_jax import paths
from inception_jax.data import pixels
from inception_jax.data import preprocessing
from inception_jax.model import googlenet
from inception_jax.model import ops as ops_lib
from inception_jax.serving import evaluation
from inception_jax.training import rundir

PLATFORMS = ('cpu', 'cuda', 'tpu')
INPUT_KINDS = {'uint8': jnp.uint8, 'float': jnp.float32}
_TF_DTYPES = {'uint8': tf.uint8, 'float': tf.float32}


def serving_function(loaded: evaluation.LoadedModel, input_kind: str
                     ) -> Callable[[jax.Array], jax.Array]:
  """images -> logits, evaluation mode, with the weights (and normalization) as constants."""
  if input_kind not in INPUT_KINDS:
    raise errors.ConfigError(
        f'input_kind must be one of {sorted(INPUT_KINDS)}, got {input_kind!r}.')
  branches = {platform: functools.partial(model.apply, loaded.variables, train=False)
              for platform, model in platform_models(loaded).items()}

  def logits(images: jax.Array) -> jax.Array:
    if input_kind == 'uint8':
      images = pixels.normalize(images, loaded.config.mean_rgb, loaded.config.std_rgb)
    return lax.platform_dependent(images, **branches).logits

  return logits


def platform_models(loaded: evaluation.LoadedModel) -> dict[str, googlenet.GoogLeNet]:
  """The run's model as each of PLATFORMS computes it.

  A kernel set or dtype the run left at 'auto' is resolved for that platform,
  not for the machine that exports, so each lowering of the artifact computes
  as its platform's own training and evaluation would.
  """
  return {platform: loaded.model.clone(
              ops=ops_lib.resolve(loaded.model.ops, platform),
              dtype=googlenet.DTYPES[googlenet.resolve_dtype(loaded.config.dtype, platform)])
          for platform in PLATFORMS}


def export_model(loaded: evaluation.LoadedModel, input_kind: str = 'uint8',
                 image_size: int | None = None, platforms: Sequence[str] = PLATFORMS
                 ) -> jax_export.Exported:
  """The `jax.export` of `serving_function` for [b, size, size, 3] inputs, any b.

  `image_size` defaults to the run's; `platforms` are some of PLATFORMS.
  """
  serve = serving_function(loaded, input_kind)
  size = image_size or loaded.config.image_size
  spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape(f'b, {size}, {size}, 3'),
                              INPUT_KINDS[input_kind])
  return jax_export.export(jax.jit(serve), platforms=tuple(platforms))(spec)


def write_saved_model(loaded: evaluation.LoadedModel, directory: str | pathlib.Path,
                      input_kind: str = 'uint8', image_size: int | None = None) -> None:
  """Writes `serving_function` as a TensorFlow SavedModel (jax2tf), any batch size.

  Signature 'serving_default': images [b, size, size, 3] -> {'logits': [b, classes]}.
  """
  size = image_size or loaded.config.image_size
  logits = jax2tf.convert(serving_function(loaded, input_kind),
                          polymorphic_shapes=[f'(b, {size}, {size}, 3)'],
                          native_serialization_platforms=PLATFORMS)
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {'logits': logits(images)}, autograph=False,
      input_signature=[tf.TensorSpec([None, size, size, 3], _TF_DTYPES[input_kind], 'images')])
  tf.saved_model.save(module, str(directory), signatures={'serving_default': module.serve})
  _check_tensorflow_runs(directory, size, input_kind)


def _check_tensorflow_runs(directory: str | pathlib.Path, size: int, input_kind: str) -> None:
  """Runs the SavedModel once in TensorFlow; removes it and raises UserError if it cannot.

  jax writes its program as StableHLO, which a TensorFlow older than the running jax
  may be unable to read: such a SavedModel would only fail where it is served.
  """
  serve = tf.saved_model.load(str(directory)).signatures['serving_default']
  try:
    serve(images=tf.zeros([1, size, size, 3], _TF_DTYPES[input_kind]))
  except tf.errors.InvalidArgumentError as e:
    if 'deserialize' not in str(e):
      raise
    tf.io.gfile.rmtree(str(directory))
    raise errors.UserError(
        f'TensorFlow {tf.__version__} cannot run the StableHLO that jax {jax.__version__} '
        f'writes ({str(e).splitlines()[0][:160]}...); no SavedModel written. Use a '
        'TensorFlow release at least as new as this jax, or the versions of '
        'requirements.txt; the jax.export artifact needs no TensorFlow.') from None


def sidecar(loaded: evaluation.LoadedModel, exported: jax_export.Exported, input_kind: str,
            class_names: tuple[str, ...]) -> dict[str, Any]:
  """What a caller needs to feed the artifact and read its output."""
  config = loaded.config
  _, height, width, channels = (str(d) for d in exported.in_avals[0].shape)
  normalization = {'mean_rgb': list(config.mean_rgb), 'std_rgb': list(config.std_rgb),
                   'scale': '0..255',
                   'applied': 'inside the artifact' if input_kind == 'uint8'
                              else 'by the caller: (pixels - mean_rgb) / std_rgb'}
  return {
      'format': 'jax.export serialized Exported; load with '
                "jax.export.deserialize(open(path, 'rb').read()).call(images)",
      'platforms': list(exported.platforms),
      'input': {'dtype': str(exported.in_avals[0].dtype), 'layout': 'NHWC, RGB',
                'shape': ['b', int(height), int(width), int(channels)],
                'normalization': normalization,
                'resize': {'shorter_side': preprocessing.eval_side(int(height),
                                                                   config.eval_resize_ratio),
                           'then': 'centre crop'}},
      'output': {'name': 'logits', 'dtype': 'float32', 'shape': ['b', len(class_names)]},
      'compute_dtype': {platform: jnp.dtype(model.dtype).name
                        for platform, model in platform_models(loaded).items()
                        if platform in exported.platforms},
      'model': config.model, 'checkpoint': loaded.path, 'step': loaded.step,
      'class_names': list(class_names),
  }


def export_checkpoint(path: paths.PathLike, out: paths.PathLike,
                      input_kind: str = 'uint8', image_size: int | None = None,
                      saved_model: str | pathlib.Path | None = None) -> dict[str, Any]:
  """Writes the artifact of checkpoint `path` to `out` and its sidecar to `out`.json.

  `path` and `out` may be local or URIs such as gs://bucket/run (`paths`). With
  `saved_model`, also writes a TensorFlow SavedModel there (through TensorFlow's
  own file system, which has its own gs:// client). Returns the sidecar.
  """
  loaded = evaluation.load_model(path, rundir.load_config(rundir.workdir_of(path)))
  exported = export_model(loaded, input_kind, image_size)
  class_names = tuple(loaded.meta['class_names'])
  info = sidecar(loaded, exported, input_kind, class_names)
  out = paths.as_path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(exported.serialize())
  out.with_name(f'{out.name}.json').write_text(json.dumps(info, indent=1))
  if saved_model:
    write_saved_model(loaded, saved_model, input_kind, image_size)
  return info


def export_command(args: argparse.Namespace) -> None:
  """`export`: writes the artifact, its description and optionally a SavedModel."""
  info = export_checkpoint(args.path, args.out, args.input, args.image_size, args.saved_model)
  print(f"wrote {args.out} ({info['model']} step {info['step']}; input "
        f"{info['input']['dtype']} {info['input']['shape']}, platforms "
        f"{', '.join(info['platforms'])}) and {args.out}.json"
        + (f'; SavedModel in {args.saved_model}' if args.saved_model else ''))
