"""Tests of inception_jax.data.preprocessing, each run eagerly and inside a tf.data map."""

import io
import itertools

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from inception_jax.data import preprocessing



def _encode(image: Image.Image, image_format: str) -> bytes:
  buffer = io.BytesIO()
  options = {'quality': 95} if image_format == 'JPEG' else {}
  image.save(buffer, image_format, **options)
  return buffer.getvalue()


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth_rgb(height: int, width: int) -> np.ndarray:
  """A smooth image, which JPEG keeps nearly intact."""
  y, x = np.mgrid[:height, :width]
  return np.stack([255 * x / width, 255 * y / height, np.full_like(x, 128)],
                  axis=-1).astype(np.uint8)


def _run_eagerly(fn, *args):
  return tf.nest.map_structure(np.asarray, fn(*(tf.constant(arg) for arg in args)))


def _run_in_dataset(fn, *args):
  ds = tf.data.Dataset.from_tensors(tuple(tf.constant(arg) for arg in args))
  return tf.nest.map_structure(np.asarray, next(iter(ds.map(fn))))


@pytest.fixture(params=['eager', 'tf.data'])
def run(request):
  """Runs a tf function eagerly or inside a tf.data map; returns numpy results."""
  return _run_eagerly if request.param == 'eager' else _run_in_dataset


RGB = _smooth_rgb(20, 30)
DECODE_CASES = {
    'rgb_jpeg': (Image.fromarray(RGB), 'JPEG'),
    'gray_jpeg': (Image.fromarray(RGB).convert('L'), 'JPEG'),
    'cmyk_jpeg': (Image.fromarray(RGB).convert('CMYK'), 'JPEG'),
    'rgb_png': (Image.fromarray(RGB), 'PNG'),
    'gray_png': (Image.fromarray(RGB).convert('L'), 'PNG'),
    'gray_alpha_png': (Image.fromarray(RGB).convert('LA'), 'PNG'),
    'rgba_png': (Image.fromarray(RGB).convert('RGBA'), 'PNG'),
    'palette_png': (Image.fromarray(RGB).convert('P'), 'PNG'),
}


@pytest.mark.parametrize('case', DECODE_CASES)
def test_decode_rgb_converts_every_mode_to_rgb(run, case):
  image, image_format = DECODE_CASES[case]
  encoded = _encode(image, image_format)
  decoded = run(preprocessing.decode_rgb, encoded)
  expected = np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB'), np.int32)
  assert decoded.shape == (20, 30, 3) and decoded.dtype == np.uint8
  tolerance = 2 if image_format == 'JPEG' else 0  # the JPEG decoders differ slightly
  assert np.abs(decoded.astype(np.int32) - expected).mean() <= tolerance
  if image.mode in ('L', 'LA'):
    assert (decoded == decoded[..., :1]).all()


@pytest.mark.parametrize('image_format', ['JPEG', 'PNG'])
def test_decode_and_crop_matches_crop_of_full_decode(run, image_format):
  encoded = _encode(Image.fromarray(_smooth_rgb(60, 80)), image_format)
  box = (7, 11, 30, 41)
  cropped = run(lambda b: preprocessing.decode_and_crop(b, lambda h, w: tf.constant(box)),
                encoded)
  full = run(preprocessing.decode_rgb, encoded)
  assert cropped.shape == (30, 41, 3)
  # libjpeg's partial decode upsamples chroma a little differently at the window edge.
  tolerance = 4 if image_format == 'JPEG' else 0
  assert np.abs(cropped.astype(int) - full[7:37, 11:52].astype(int)).max() <= tolerance


def _sample_boxes(run, height, width, count, area_range=(0.08, 1.0),
                  aspect_range=(3 / 4, 4 / 3)) -> np.ndarray:
  """Inception boxes for seeds (0, 0) .. (0, count - 1), all in one tf call."""

  def sample_all(seeds):
    return tf.map_fn(
        lambda seed: preprocessing.sample_inception_box(
            height, width, seed, area_range, aspect_range),
        seeds, fn_output_signature=tf.int32)

  seeds = np.stack([np.zeros(count), np.arange(count)], axis=1).astype(np.int64)
  return run(sample_all, seeds)


def test_inception_box_is_in_image_and_in_ranges(run):
  height, width = 90, 120
  count = 1000 if run is _run_in_dataset else 50  # eager map_fn is slow
  boxes = _sample_boxes(run, height, width, count)
  y, x, h, w = boxes.T
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= height).all() and (x + w <= width).all()
  fallback = preprocessing.center_box_with_aspect(height, width, (3 / 4, 4 / 3)).numpy()
  sampled = ~(boxes == fallback).all(axis=1)
  assert sampled.mean() > 0.95  # a 4:3 image almost never needs the fall-back
  h, w, area = h[sampled], w[sampled], height * width
  # Sides are rounded to whole pixels: allow half a pixel on each.
  assert ((w - 0.5) * (h - 0.5) <= 1.0 * area).all()
  assert ((w + 0.5) * (h + 0.5) >= 0.08 * area).all()
  assert ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
  assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all()
  fractions = w * h / area
  assert fractions.min() < 0.2 and fractions.max() > 0.8  # the whole range is used
  assert len(np.unique(boxes, axis=0)) > 0.9 * count


def test_inception_box_falls_back_to_centre_crop(run):
  # No 8%..100% crop with aspect ratio 3/4..4/3 fits in a 10 x 400 strip.
  boxes = _sample_boxes(run, 10, 400, 20)
  np.testing.assert_array_equal(boxes, np.tile([0, 193, 10, 13], (20, 1)))


def test_center_box_with_aspect_clamps_the_aspect_ratio(run):
  def center_box(height, width):
    return preprocessing.center_box_with_aspect(height, width, (3 / 4, 4 / 3))

  # Portrait 10 x 400 (w x h): the height is cut to round(10 / (3/4)) = 13.
  np.testing.assert_array_equal(run(center_box, np.int32(400), np.int32(10)),
                                [193, 0, 13, 10])
  np.testing.assert_array_equal(run(center_box, np.int32(90), np.int32(100)),
                                [0, 0, 90, 100])


def test_resize_shorter_side_keeps_aspect_ratio(run):
  landscape = run(lambda im: tf.shape(preprocessing.resize_shorter_side(im, 128)),
                  _random_rgb(256, 320))
  portrait = run(lambda im: tf.shape(preprocessing.resize_shorter_side(im, 100)),
                 _random_rgb(90, 60))
  np.testing.assert_array_equal(landscape, [128, 160, 3])
  np.testing.assert_array_equal(portrait, [150, 100, 3])


def test_resize_methods_give_size_and_range(run):
  image = _random_rgb(40, 50)
  for method in preprocessing.RESIZE_METHODS:
    resized = run(lambda im, m=method: preprocessing.resize(im, 32, m), image)
    assert resized.shape == (32, 32, 3) and resized.dtype == np.float32
    assert resized.min() >= 0 and resized.max() <= 255


def test_random_method_resize_uses_every_method():
  image = tf.constant(_random_rgb(40, 50))
  expected = {preprocessing.resize(image, 16, method).numpy().tobytes()
              for method in preprocessing.RESIZE_METHODS}
  seen = {preprocessing.random_method_resize(image, 16, tf.constant([0, i])).numpy()
          .tobytes() for i in range(40)}
  assert seen == expected


def test_distort_color_is_seeded_and_in_range(run):
  image = _random_rgb(16, 16).astype(np.float32)
  first = run(preprocessing.distort_color, image, np.array([1, 2]))
  again = run(preprocessing.distort_color, image, np.array([1, 2]))
  other = run(preprocessing.distort_color, image, np.array([1, 3]))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other) and not np.allclose(first, image)
  assert first.min() >= 0 and first.max() <= 255


def test_to_pixels_rounds_to_the_nearest_and_saturates(run):
  image = np.array([[[-3.0, 0.4, 1.6], [128.49, 254.6, 300.0]]], np.float32)
  pixels = run(preprocessing.to_pixels, image)
  assert pixels.dtype == np.uint8
  np.testing.assert_array_equal(pixels, [[[0, 0, 2], [128, 255, 255]]])


def test_the_random_flip_mirrors_the_unflipped_pixels():
  encoded = _encode(Image.fromarray(_random_rgb(48, 64)), 'JPEG')
  flipping = preprocessing.TrainPreprocess(32, color_distortion=True)
  plain = preprocessing.TrainPreprocess(32, color_distortion=True, random_flip=False)
  mirrored = []
  for i in range(12):
    seed = np.array([5, i])
    got, unflipped = (_run_eagerly(p, encoded, seed) for p in (flipping, plain))
    if np.array_equal(got, unflipped[:, ::-1]):
      mirrored.append(True)
    else:
      np.testing.assert_array_equal(got, unflipped)
      mirrored.append(False)
  assert any(mirrored) and not all(mirrored)


def test_eval_center_crop_takes_the_middle(run):
  # A 320 x 256 (w x h) image at 224 with ratio 256/224 is not resized.
  image = _random_rgb(256, 320)
  encoded = _encode(Image.fromarray(image), 'PNG')
  preprocess = preprocessing.EvalPreprocess(224)
  cropped = run(preprocess, encoded)
  np.testing.assert_array_equal(cropped, image[16:240, 48:272])


@pytest.mark.parametrize('shape,image_format,size,ratio', [
    ((375, 500), 'JPEG', 224, 256 / 224),  # ImageNet's typical photo: a window is decoded
    ((500, 375), 'PNG', 224, 256 / 224),
    ((1200, 1600), 'JPEG', 32, 256 / 224),  # a large downscale: a wide filter
    ((48, 64), 'PNG', 224, 256 / 224),  # upscaled
    ((37, 37), 'JPEG', 32, 1.0),  # square at ratio 1: the whole image
])
def test_eval_crop_equals_resizing_the_whole_image_then_cropping(run, shape, image_format,
                                                                 size, ratio):
  encoded = _encode(Image.fromarray(_random_rgb(*shape)), image_format)
  cropped = run(lambda image_bytes: preprocessing.decode_center_crop(
      image_bytes, size, ratio), encoded)
  # The reference: TensorFlow's antialiased resize of the whole decoded image, then the
  # centre crop.
  decoded = tf.io.decode_image(encoded, channels=3)
  height, width = shape
  side = round(size * ratio)
  scale = side / min(height, width)
  resized = tf.image.resize(decoded, [round(height * scale), round(width * scale)],
                            antialias=True).numpy().clip(0, 255)
  y, x = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
  np.testing.assert_allclose(cropped, resized[y:y + size, x:x + size], atol=0.01)


# Hand arithmetic for a 320 x 256 (w x h) image and 224 crops: (y, x) of the top-left,
# top-right, bottom-left, bottom-right and centre crops of 224 x 224.
TEN_CROP_LANDSCAPE = [(0, 0), (0, 96), (32, 0), (32, 96), (16, 48)]
TEN_CROP_PORTRAIT = [(0, 0), (0, 32), (96, 0), (96, 32), (48, 16)]


@pytest.mark.parametrize('shape,corners', [((256, 320), TEN_CROP_LANDSCAPE),
                                           ((320, 256), TEN_CROP_PORTRAIT)])
def test_ten_crop_boxes_and_mirrors(run, shape, corners):
  image = _random_rgb(*shape)
  crops = run(lambda im: preprocessing.ten_crop(im, 224, 256 / 224), image)
  expected = [(y, x, 224, 224) for y, x in corners] * 2
  np.testing.assert_array_equal(crops.boxes, expected)
  np.testing.assert_array_equal(crops.sides, [256] * 10)
  np.testing.assert_array_equal(crops.flipped, [False] * 5 + [True] * 5)
  assert crops.images.shape == (10, 224, 224, 3)
  for (y, x), crop in zip(corners, crops.images[:5]):  # the image is not resized
    np.testing.assert_allclose(crop, image[y:y + 224, x:x + 224], atol=1e-3)
  np.testing.assert_array_equal(crops.images[5:], crops.images[:5, :, ::-1])


def _expected_144_boxes(portrait: bool) -> list[tuple[int, int, int, int]]:
  """The 72 unmirrored boxes for a 320 x 256 image (or 256 x 320 if portrait)."""
  # Per scale: (square side, square offsets along the long side, far corner offset,
  # centre offset), e.g. side 288 resizes to 360 x 288: squares at 0, 36, 72.
  scales = [(256, (0, 32, 64), 32, 16), (288, (0, 36, 72), 64, 32),
            (320, (0, 40, 80), 96, 48), (352, (0, 44, 88), 128, 64)]
  boxes = []
  for side, offsets, far, centre in scales:
    for offset in offsets:
      square_y, square_x = (offset, 0) if portrait else (0, offset)
      corners = [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]
      boxes += [(square_y + y, square_x + x, 224, 224) for y, x in corners]
      boxes.append((square_y, square_x, side, side))
  return boxes


@pytest.mark.parametrize('run,portrait', [
    pytest.param(_run_eagerly, False, id='eager-landscape'),
    pytest.param(_run_eagerly, True, id='eager-portrait'),
    pytest.param(_run_in_dataset, True, id='tf.data-portrait'),
])
def test_multi_scale_crop_boxes_and_mirrors(run, portrait):
  image = _random_rgb(*((320, 256) if portrait else (256, 320)))
  crops = run(lambda im: preprocessing.multi_scale_crop(im, 224), image)
  assert crops.images.shape == (144, 224, 224, 3)
  np.testing.assert_array_equal(crops.boxes, _expected_144_boxes(portrait) * 2)
  sides = list(itertools.chain.from_iterable([s] * 18 for s in (256, 288, 320, 352)))
  np.testing.assert_array_equal(crops.sides, sides * 2)
  np.testing.assert_array_equal(crops.flipped, [False] * 72 + [True] * 72)
  np.testing.assert_array_equal(crops.images[72:], crops.images[:72, :, ::-1])
  for box, crop in zip(crops.boxes[:5], crops.images[:5]):  # scale 256: not resized
    y, x, h, w = box
    np.testing.assert_allclose(crop, image[y:y + h, x:x + w], atol=1e-3)
  whole_square = tf.image.resize(image[:256, :256] if portrait else image[:, :256],
                                 [224, 224], antialias=True).numpy()
  np.testing.assert_allclose(crops.images[5], whole_square, atol=1e-3)


@pytest.mark.parametrize('options,image_format', [
    ({}, 'JPEG'),
    ({}, 'PNG'),
    ({'crop': 'center'}, 'JPEG'),
    ({'color_distortion': True, 'random_resize_method': True}, 'PNG'),
    ({'random_flip': False, 'area_range': (0.5, 0.5), 'aspect_range': (1.0, 1.0)}, 'JPEG'),
])
def test_train_preprocess_is_a_function_of_the_seed(run, options, image_format):
  preprocess = preprocessing.TrainPreprocess(32, **options)
  encoded = _encode(Image.fromarray(_random_rgb(48, 64)), image_format)
  seeds = np.array([[3, 4], [3, 4], [3, 5]])
  first, again, other = run(lambda image_bytes, seeds: tf.map_fn(
      lambda seed: preprocess(image_bytes, seed), seeds,
      fn_output_signature=tf.uint8), encoded, seeds)
  assert first.shape == (32, 32, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  if options.get('crop') != 'center':
    assert not np.array_equal(first, other)


def test_train_preprocess_eager_equals_dataset():
  preprocess = preprocessing.TrainPreprocess(32, color_distortion=True)
  encoded = _encode(Image.fromarray(_random_rgb(48, 64)), 'JPEG')
  seed = np.array([7, 8])
  np.testing.assert_array_equal(_run_eagerly(preprocess, encoded, seed),
                                _run_in_dataset(preprocess, encoded, seed))


@pytest.mark.parametrize('crops', [1, 10, 144])
def test_eval_preprocess_shapes(crops):
  preprocess = preprocessing.EvalPreprocess(16, crops=crops)
  encoded = _encode(Image.fromarray(_random_rgb(20, 24)), 'PNG')
  assert _run_eagerly(preprocess, encoded).shape == preprocess.output_shape


@pytest.mark.parametrize('kwargs,message', [
    ({'crop': 'random'}, 'crop'),
    ({'area_range': (0.5, 0.1)}, 'crop_area_range'),
    ({'aspect_range': (0.0, 1.0)}, 'crop_aspect_range'),
    ({'eval_resize_ratio': 0.5}, 'eval_resize_ratio'),
])
def test_train_preprocess_rejects_bad_options(kwargs, message):
  with pytest.raises(ValueError, match=message):
    preprocessing.TrainPreprocess(32, **kwargs)


def test_eval_preprocess_rejects_other_crop_counts():
  with pytest.raises(ValueError, match='1, 10 or 144'):
    preprocessing.EvalPreprocess(32, crops=5)


def test_mirror_warning_only_for_multi_crop_of_models_trained_without_flips(caplog):
  for crops, random_flip in [(1, False), (1, True), (10, True), (144, True)]:
    preprocessing.warn_if_mirrors_unseen(crops, random_flip)
  assert not caplog.records
  preprocessing.warn_if_mirrors_unseen(10, False)
  assert 'random_flip=False' in caplog.text and '10 crops' in caplog.text
