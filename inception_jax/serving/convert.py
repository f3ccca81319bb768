"""`python -m inception_jax convert`: pretrained GoogLeNet weights as run directories.

Sources:
  * torchvision (`convert torchvision [googlenet.pth] OUT`): a `torchvision.models.googlenet`
    state dict becomes `googlenet_bn` (the same topology, BatchNorm eps 1e-3).
  * BVLC Caffe (`convert caffe [bvlc_googlenet.caffemodel] OUT`): the paper's `googlenet`
    from the layers named as in `bvlc_googlenet`'s prototxt (`conv1/7x7_s2`, ...,
    `loss1/fc`, `loss3/classifier`); both the current (`layer`) and the legacy V1
    (`layers`) net formats are read, through the minimal schema in `caffe_pb2`.
Without the file, the official one is downloaded, checked and cached (`weights.fetch`).

Layouts: convolutions OIHW -> HWIO, fully connected (out, in) -> (in, out), BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var. The aux heads' first
fully connected layer reads a flattened 4x4x128 map, flattened (C, H, W) in torch
and Caffe but (H, W, C) here, so its input rows are permuted. Auxiliary heads are
converted when the source has them and left out of the model (`aux_heads=False`)
when it has none.

Input normalization, written into OUT/config.json as `mean_rgb`/`std_rgb` (0..255
scale, RGB), so that evaluate, predict and export feed what the weights expect:
  * torchvision with `transform_input=True` (its pretrained ImageNet weights) sees
    (x/255 - 0.5) / 0.5: mean 127.5, std 127.5. With `--no-transform-input` (weights
    trained without it), torchvision's ImageNet mean and std.
  * Caffe sees BGR pixels on 0..255 minus (104, 117, 123). conv1's input channels are
    reversed, so the model reads RGB with mean (123, 117, 104) and std 1.

OUT is a run directory like training writes: `config.json` (from
the shipped config `imagenet_bn` or `imagenet_paper`) and `checkpoints/0/`.
`evaluate`, `predict`, `export` and `--config.init_from` accept it.
"""

import argparse
import math
import pathlib
from typing import Any, Mapping

from etils import epath
import google.protobuf.message
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from inception_jax import config as config_lib
from inception_jax import errors
from inception_jax import paths
from inception_jax.data import pipeline
from inception_jax.data import tfds_source
from inception_jax.model import googlenet
from inception_jax.serving import caffe_pb2
from inception_jax.serving import weights
from inception_jax.training import checkpointing
from inception_jax.training import rundir

Variables = dict[str, Any]

TORCHVISION_TRANSFORMED_MEAN_STD = ((127.5,) * 3, (127.5,) * 3)
TORCHVISION_IMAGENET_MEAN_STD = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
CAFFE_MEAN_STD = ((123.0, 117.0, 104.0), (1.0, 1.0, 1.0))
_BLOCKS = tuple(googlenet.INCEPTION_WIDTHS)
_BRANCHES = ('1x1', '3x3_reduce', '3x3', '5x5_reduce', '5x5', 'pool_proj')
_TORCHVISION_BRANCHES = dict(zip(
    ('branch1', 'branch2.0', 'branch2.1', 'branch3.0', 'branch3.1', 'branch4.1'), _BRANCHES))
_AUX_HEADS = (1, 2)


def _to_numpy(value: Any) -> np.ndarray:
  """A float32 numpy copy of a torch tensor or array-like."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, np.float32)


def _conv_kernel(oihw: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(oihw.transpose(2, 3, 1, 0))


def _dense_kernel(out_in: np.ndarray, flattened_channels: int | None = None) -> np.ndarray:
  """(out, in) -> (in, out); with `flattened_channels`, rows go from (C, H, W) to (H, W, C)."""
  if flattened_channels is not None:
    out_features = out_in.shape[0]
    out_in = out_in.reshape(out_features, flattened_channels, -1).transpose(0, 2, 1)
    out_in = out_in.reshape(out_features, -1)
  return np.ascontiguousarray(out_in.T)


def _require_exactly(expected: set[str], found: set[str], what: str, source: str,
                     hint: str) -> None:
  """Raises ValueError listing the `expected` names not `found` and the `found` not expected."""
  missing, unexpected = sorted(expected - found), sorted(found - expected)
  problems = ([f'missing {what} {missing}'] if missing else []) + (
      [f'unexpected {what} {unexpected}'] if unexpected else [])
  if problems:
    raise errors.UserError(f"this is not {source}: {'; '.join(problems)}. {hint}")


def _torchvision_layers(aux_heads: bool) -> tuple[dict[str, str], dict[str, str]]:
  """(conv + BN layers, fully connected layers): torchvision prefix -> Flax module path."""
  convs = {'conv1': 'conv1', 'conv2': 'conv2_reduce', 'conv3': 'conv2'}
  for block in _BLOCKS:
    for torch_branch, branch in _TORCHVISION_BRANCHES.items():
      convs[f'inception{block}.{torch_branch}'] = f'inception_{block}/{branch}'
  denses = {'fc': 'classifier'}
  if aux_heads:
    for i in _AUX_HEADS:
      convs[f'aux{i}.conv'] = f'aux{i}/conv'
      denses.update({f'aux{i}.fc1': f'aux{i}/fc', f'aux{i}.fc2': f'aux{i}/classifier'})
  return convs, denses


def convert_torchvision(state_dict: Mapping[str, Any]) -> Variables:
  """`googlenet_bn` variables {'params', 'batch_stats'} from a torchvision GoogLeNet state dict.

  Values may be torch tensors or arrays. The aux heads are converted if the state
  dict has them (`aux1.*`, `aux2.*`). Raises ValueError listing missing or
  unexpected keys.
  """
  aux_heads = any(key.startswith('aux') for key in state_dict)
  convs, denses = _torchvision_layers(aux_heads)
  bn_keys = ('weight', 'bias', 'running_mean', 'running_var')
  expected = {f'{p}.conv.weight' for p in convs}
  expected |= {f'{p}.bn.{k}' for p in convs for k in bn_keys}
  expected |= {f'{p}.{k}' for p in denses for k in ('weight', 'bias')}
  found = {k for k in state_dict if not k.endswith('.num_batches_tracked')}
  _require_exactly(expected, found, 'keys', 'a torchvision GoogLeNet state dict',
                   'Save one with torch.save(torchvision.models.googlenet(...).state_dict(), '
                   'PATH).')
  weight = {k: _to_numpy(v) for k, v in state_dict.items() if k in expected}
  params, stats = {}, {}
  for prefix, path in convs.items():
    params[f'{path}/conv/kernel'] = _conv_kernel(weight[f'{prefix}.conv.weight'])
    params[f'{path}/bn/scale'] = weight[f'{prefix}.bn.weight']
    params[f'{path}/bn/bias'] = weight[f'{prefix}.bn.bias']
    stats[f'{path}/bn/mean'] = weight[f'{prefix}.bn.running_mean']
    stats[f'{path}/bn/var'] = weight[f'{prefix}.bn.running_var']
  for prefix, path in denses.items():
    flattened = None
    if prefix.endswith('.fc1'):
      flattened = weight[f'{prefix.removesuffix(".fc1")}.conv.conv.weight'].shape[0]
    params[f'{path}/kernel'] = _dense_kernel(weight[f'{prefix}.weight'], flattened)
    params[f'{path}/bias'] = weight[f'{prefix}.bias']
  return {'params': googlenet.from_named_leaves(params), 'batch_stats': googlenet.from_named_leaves(stats)}


def torchvision_mean_std(transform_input: bool
                         ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The (mean_rgb, std_rgb) on 0..255 that torchvision GoogLeNet weights expect.

  torchvision's own preprocessing normalizes with ImageNet's mean and std; with
  `transform_input=True` (set for its pretrained weights) the model then maps that
  back to (x/255 - 0.5) / 0.5, which is what the converted model must be fed.
  """
  return TORCHVISION_TRANSFORMED_MEAN_STD if transform_input else TORCHVISION_IMAGENET_MEAN_STD


def _caffe_layers(aux_heads: bool) -> tuple[dict[str, str], dict[str, str]]:
  """(convolutions, inner products): bvlc_googlenet layer name -> Flax module path."""
  convs = {'conv1/7x7_s2': 'conv1', 'conv2/3x3_reduce': 'conv2_reduce', 'conv2/3x3': 'conv2'}
  for block in _BLOCKS:
    for branch in _BRANCHES:
      convs[f'inception_{block}/{branch}'] = f'inception_{block}/{branch}'
  denses = {'loss3/classifier': 'classifier'}
  if aux_heads:
    for i in _AUX_HEADS:
      convs[f'loss{i}/conv'] = f'aux{i}/conv'
      denses.update({f'loss{i}/fc': f'aux{i}/fc', f'loss{i}/classifier': f'aux{i}/classifier'})
  return convs, denses


def _blob_array(blob: Any, where: str) -> np.ndarray:
  """A Caffe BlobProto as a float32 array of its shape (legacy num/channels/height/width too)."""
  if blob.HasField('shape'):
    dims = tuple(blob.shape.dim)
  else:
    dims = (blob.num, blob.channels, blob.height, blob.width)
  values = np.array(blob.data if len(blob.data) else blob.double_data, np.float32)
  if values.size != math.prod(dims):
    raise errors.UserError(
        f'{where} has {values.size} values for shape {dims}: the caffemodel '
        'is damaged.')
  return values.reshape(dims)


def read_caffe_blobs(caffemodel: bytes) -> dict[str, list[np.ndarray]]:
  """The weight blobs of every layer that has some, by layer name, from caffemodel bytes."""
  try:
    net = caffe_pb2.NetParameter.FromString(caffemodel)
  except google.protobuf.message.DecodeError as e:
    raise errors.UserError(f'not a Caffe NetParameter (.caffemodel) file: {e}') from e
  layers = list(net.layer) or list(net.layers)
  return {layer.name: [_blob_array(blob, f'blob {i} of layer {layer.name}')
                       for i, blob in enumerate(layer.blobs)]
          for layer in layers if len(layer.blobs)}


def _weight_and_bias(blobs: Mapping[str, list[np.ndarray]], name: str, ndim: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """A layer's (weight, bias), legacy 4-D padding (leading 1s) removed from dense layers."""
  if len(blobs[name]) != 2:
    raise errors.UserError(
        f'Caffe layer {name} has {len(blobs[name])} blobs; expected weight '
        'and bias.')
  weight, bias = blobs[name]
  while weight.ndim > ndim and weight.shape[0] == 1:
    weight = weight[0]
  if weight.ndim != ndim:
    raise errors.UserError(
        f'Caffe layer {name} has weights of shape {weight.shape}; expected '
        f'{ndim} dimensions.')
  return weight, bias.reshape(-1)


def convert_caffe(caffemodel: bytes) -> Variables:
  """Paper `googlenet` variables {'params'} from the bytes of a bvlc_googlenet caffemodel.

  conv1's input channels are reversed (Caffe reads BGR), so the result reads RGB
  normalized with `CAFFE_MEAN_STD`. The aux heads (`loss1/*`, `loss2/*`) are
  converted when present. Raises ValueError listing missing or unexpected layers.
  """
  blobs = read_caffe_blobs(caffemodel)
  aux_heads = any(name.startswith(('loss1/', 'loss2/')) for name in blobs)
  convs, denses = _caffe_layers(aux_heads)
  _require_exactly(set(convs) | set(denses), set(blobs), 'layers with weights',
                   'a bvlc_googlenet caffemodel',
                   "Layer names must follow bvlc_googlenet's train_val.prototxt.")
  params = {}
  for name, path in convs.items():
    weight, bias = _weight_and_bias(blobs, name, 4)
    kernel = _conv_kernel(weight)
    if name == 'conv1/7x7_s2':
      kernel = np.ascontiguousarray(kernel[:, :, ::-1, :])  # BGR -> RGB input channels
    params[f'{path}/conv/kernel'], params[f'{path}/conv/bias'] = kernel, bias
  for name, path in denses.items():
    weight, bias = _weight_and_bias(blobs, name, 2)
    flattened = None
    if name.endswith('/fc'):
      flattened = blobs[name.replace('/fc', '/conv')][0].shape[0]
    params[f'{path}/kernel'] = _dense_kernel(weight, flattened)
    params[f'{path}/bias'] = bias
  return {'params': googlenet.from_named_leaves(params)}


def imagenet_class_names(num_classes: int) -> tuple[str, ...]:
  """ImageNet's readable class names in synset order (as torchvision and Caffe order them).

  From the lists that ship with tfds; '0'..'N-1' for another number of classes.
  """
  names = tuple(tfds_source.synset_names().values())
  return names if num_classes == len(names) else tuple(str(i) for i in range(num_classes))


def check_fits(model: googlenet.GoogLeNet, variables: Variables, image_size: int) -> None:
  """Raises ValueError listing every array that `model` lacks, misses or shapes otherwise."""
  expected = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
  want = {k: v.shape for k, v in googlenet.named_leaves(expected).items()}
  got = {k: np.shape(v) for k, v in googlenet.named_leaves(variables).items()}
  problems = [f'{k}: missing' for k in sorted(set(want) - set(got))]
  problems += [f'{k}: not in the model' for k in sorted(set(got) - set(want))]
  problems += [f'{k}: model {want[k]}, converted {got[k]}'
               for k in sorted(set(want) & set(got)) if tuple(want[k]) != tuple(got[k])]
  if problems:
    raise errors.UserError(
        'the converted weights do not fit the model:\n  ' + '\n  '.join(problems))


def write_run(directory: paths.PathLike, config: ml_collections.ConfigDict,
              variables: Variables, class_names: tuple[str, ...]) -> epath.Path:
  """Writes `variables` as step 0 of a run directory with `config`; returns its path.

  The directory gets `config.json` and `checkpoints/0/` with the same metadata
  training writes. Refuses a directory that already holds checkpoints.
  """
  directory = paths.as_path(directory)
  if (directory / 'checkpoints').exists():
    raise errors.UserError(f'{directory} already holds checkpoints; choose a new directory.')
  check_fits(rundir.build_model(config, len(class_names)), variables, config.image_size)
  directory.mkdir(parents=True, exist_ok=True)
  rundir.save_config(config, directory)
  info = pipeline.DatasetInfo(name=config.dataset, num_classes=len(class_names),
                                    class_names=tuple(class_names), split_sizes={})
  state = {k: v for k, v in variables.items() if v}
  manager = checkpointing.create_manager(directory / 'checkpoints')
  checkpointing.save(manager, 0, state, rundir.checkpoint_meta(config, info))
  manager.wait_until_finished()
  manager.close()
  return directory


def converted_config(base: str, variables: Variables,
                     mean_std: tuple[tuple[float, ...], tuple[float, ...]]
                     ) -> ml_collections.ConfigDict:
  """The experiment config `base` (e.g. 'imagenet_bn') for converted `variables`."""
  config = config_lib.load(base)
  config.mean_rgb, config.std_rgb = mean_std
  if 'aux1' not in variables['params']:
    config.model_options.aux_heads = False
  return config


def _num_classes(variables: Variables) -> int:
  return int(variables['params']['classifier']['bias'].shape[0])


def _load_torch_state_dict(path: str) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.UserError(
        f"reading {path} needs PyTorch, which is not installed: pip install "
        "'inception_jax[torch]' (or pip install torch).") from None
  state_dict = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state_dict, Mapping):
    raise errors.UserError(f'{path} holds a {type(state_dict).__name__}, not a state dict; '
                           'save one with torch.save(model.state_dict(), PATH).')
  return state_dict


def _report(out: epath.Path, config: ml_collections.ConfigDict, num_classes: int) -> None:
  print(f'wrote {out}: {config.model}, {num_classes} classes, aux heads '
        f"{'off' if config.model_options.aux_heads is False else 'on'}; inputs RGB "
        f'normalized with mean_rgb={tuple(config.mean_rgb)}, std_rgb={tuple(config.std_rgb)}.\n'
        f'Try: python -m inception_jax predict {out} IMAGE...')


_WEIGHT_SUFFIXES = ('.pth', '.pt', '.caffemodel')


def _weights_file(source: str, given: str | None, out: str, metavar: str) -> str:
  """The file to convert: `given`, else the official one of `source` (downloaded once, checked).

  Without `given`, OUT naming an existing file or a weights file name is refused:
  it is most likely the file, given with OUT left out.
  """
  if given is not None:
    return given
  if pathlib.Path(out).is_file() or out.endswith(_WEIGHT_SUFFIXES):
    raise errors.UserError(
        f'{out} looks like a weights file, not the run directory to write; give both: '
        f'convert {source} {metavar} OUT (or only OUT to download the official weights).')
  return str(weights.fetch(source, alternative=(
      f'or pass it as {metavar} (python -m inception_jax convert {source} {metavar} OUT)')))


def from_torchvision_file(path: paths.PathLike, transform_input: bool = True
                          ) -> tuple[ml_collections.ConfigDict, Variables]:
  """(run config, `googlenet_bn` variables) of a torchvision GoogLeNet state dict file."""
  variables = convert_torchvision(_load_torch_state_dict(str(path)))
  mean_std = torchvision_mean_std(transform_input)
  return converted_config('imagenet_bn', variables, mean_std), variables


def from_caffe_file(path: paths.PathLike) -> tuple[ml_collections.ConfigDict, Variables]:
  """(run config, paper `googlenet` variables) of a bvlc_googlenet .caffemodel file."""
  variables = convert_caffe(pathlib.Path(path).read_bytes())
  return converted_config('imagenet_paper', variables, CAFFE_MEAN_STD), variables


def torchvision_command(args: argparse.Namespace) -> None:
  """`convert torchvision`: a run directory from a state dict file, or the official one."""
  path = _weights_file('torchvision', args.weights, args.out, 'WEIGHTS')
  _write_and_report(args.out, *from_torchvision_file(path, args.transform_input))


def caffe_command(args: argparse.Namespace) -> None:
  """`convert caffe`: a run directory from a bvlc_googlenet .caffemodel, or the official one."""
  path = _weights_file('caffe', args.caffemodel, args.out, 'CAFFEMODEL')
  _write_and_report(args.out, *from_caffe_file(path))


def _write_and_report(out: str, config: ml_collections.ConfigDict, variables: Variables) -> None:
  num_classes = _num_classes(variables)
  _report(write_run(out, config, variables, imagenet_class_names(num_classes)), config,
          num_classes)
