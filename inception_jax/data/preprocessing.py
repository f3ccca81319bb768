"""Image preprocessing as TensorFlow graph functions, for use inside `tf.data` maps.

Images enter as encoded bytes (JPEG, PNG, GIF or BMP) and leave as uint8 RGB pixels;
the training and evaluation steps normalize them on the device (`inception_jax.data.pixels`).
Every random operation is stateless: it takes an explicit seed,
an int32/int64 tensor of shape [2], so the same (image, seed) always gives the same
output. Boxes are int32 tensors `(y, x, height, width)` in pixels.

Training (`TrainPreprocess`): Inception crop (decoded inside the crop window only, for
JPEGs) or centre crop, resize to `image_size` (optionally by a randomly chosen
interpolation method, as in the GoogLeNet paper), optional photometric distortions,
rounding to uint8, random horizontal flip.

Evaluation (`EvalPreprocess`): resize the shorter side to
`round(image_size * resize_ratio)` and take the centre crop (`decode_center_crop`, which
decodes and resamples only the crop's window), or the paper's 10 or 144 crops
(`ten_crop`, `multi_scale_crop`).
"""

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

from absl import logging
import tensorflow as tf

from inception_jax import config as config_lib
from inception_jax import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')  # what `decode_rgb` reads

# The interpolation methods the GoogLeNet paper chooses from at random.
RESIZE_METHODS = ('bilinear', 'area', 'nearest', 'bicubic')
# Shorter sides of the paper's 144-crop evaluation, for 224-pixel crops.
MULTI_SCALE_SIDES = (256, 288, 320, 352)
_PAPER_IMAGE_SIZE = 224
# Photometric distortions of the Inception preprocessing (TF-slim), on the 0..1 scale.
_MAX_BRIGHTNESS_DELTA = 32 / 255
_SATURATION_RANGE = (0.5, 1.5)
_MAX_HUE_DELTA = 0.2
_CONTRAST_RANGE = (0.5, 1.5)
_MAX_PIXEL = 255.0


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
  """Decodes a JPEG, PNG, GIF or BMP into uint8 RGB [height, width, 3].

  The codecs convert to RGB while decoding: grayscale is replicated to three channels,
  the alpha channel of RGBA/gray+alpha PNGs is dropped, palette images are expanded,
  CMYK JPEGs are converted by libjpeg-turbo, and only the first frame of a GIF is kept.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def crop_to_box(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
  """Returns `image[y:y + height, x:x + width]` for `box = (y, x, height, width)`."""
  y, x, height, width = tf.unstack(box)
  return image[y:y + height, x:x + width]


BoxFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (height, width) -> box


def decode_and_crop(image_bytes: tf.Tensor, box_fn: BoxFn) -> tf.Tensor:
  """Decodes an image and crops it to `box_fn(height, width)`, a box tensor.

  JPEGs are decoded only inside the box (`tf.image.decode_and_crop_jpeg`); they are
  measured from their header, so `box_fn` never waits for a full decode.
  """
  return decode_and_crop_with_size(image_bytes, box_fn)[0]


def decode_and_crop_with_size(image_bytes: tf.Tensor,
                              box_fn: BoxFn) -> tuple[tf.Tensor, tf.Tensor]:
  """`decode_and_crop`, and the whole image's [height, width] (int32)."""

  def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.image.extract_jpeg_shape(image_bytes)
    box = box_fn(shape[0], shape[1])
    return tf.image.decode_and_crop_jpeg(image_bytes, box, channels=3), shape[:2]

  def other() -> tuple[tf.Tensor, tf.Tensor]:
    image = decode_rgb(image_bytes)
    shape = tf.shape(image)
    return crop_to_box(image, box_fn(shape[0], shape[1])), shape[:2]

  image, size = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image, size


def center_box_with_aspect(height: tf.Tensor, width: tf.Tensor,
                           aspect_range: Sequence[float]) -> tf.Tensor:
  """The largest centred box whose aspect ratio (width / height) is in `aspect_range`.

  This is the whole image when its own aspect ratio is in range; otherwise the longer
  side is cut to bring the ratio to the nearest end of the range.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  aspect = tf.clip_by_value(w / h, aspect_range[0], aspect_range[1])
  crop_w = tf.minimum(width, tf.cast(tf.round(h * aspect), tf.int32))
  crop_h = tf.minimum(height, tf.cast(tf.round(w / aspect), tf.int32))
  return tf.stack([(height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w])


def sample_inception_box(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
                         area_range: Sequence[float] = (0.08, 1.0),
                         aspect_range: Sequence[float] = (3 / 4, 4 / 3),
                         max_attempts: int = 10) -> tf.Tensor:
  """Samples the Inception crop box of a `height` x `width` image, statelessly.

  Each of `max_attempts` candidates draws an area fraction uniformly from `area_range`
  and an aspect ratio (width / height) log-uniformly from `aspect_range`; its sides are
  rounded to whole pixels. The first candidate that fits in the image is placed at a
  uniformly random position. If none fits (rare unless the image is far from the
  aspect range), the box falls back to `center_box_with_aspect`.
  """
  area_seed, aspect_seed, y_seed, x_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  area = tf.cast(height * width, tf.float32) * tf.random.stateless_uniform(
      [max_attempts], area_seed, area_range[0], area_range[1])
  aspect = tf.exp(tf.random.stateless_uniform(
      [max_attempts], aspect_seed, math.log(aspect_range[0]), math.log(aspect_range[1])))
  crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  fits = (crop_h >= 1) & (crop_h <= height) & (crop_w >= 1) & (crop_w <= width)
  first = tf.argmax(tf.cast(fits, tf.int32))

  def place_first_fit() -> tf.Tensor:
    y = tf.random.stateless_uniform(
        [], y_seed, 0, height - crop_h[first] + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform(
        [], x_seed, 0, width - crop_w[first] + 1, dtype=tf.int32)
    return tf.stack([y, x, crop_h[first], crop_w[first]])

  return tf.cond(tf.reduce_any(fits), place_first_fit,
                 lambda: center_box_with_aspect(height, width, aspect_range))


def resize(image: tf.Tensor, size: int, method: str = 'bilinear') -> tf.Tensor:
  """Resizes to `size` x `size` (ignoring the aspect ratio); float32 in 0..255."""
  resized = tf.image.resize(image, [size, size], method=method, antialias=True)
  return tf.clip_by_value(tf.cast(resized, tf.float32), 0.0, _MAX_PIXEL)


def random_method_resize(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """Resizes to `size` x `size` by a method drawn uniformly from `RESIZE_METHODS`."""
  index = tf.random.stateless_uniform([], seed, 0, len(RESIZE_METHODS), dtype=tf.int32)
  branches = [lambda m=method: resize(image, size, m) for method in RESIZE_METHODS]
  resized = tf.switch_case(index, branches)
  resized.set_shape([size, size, 3])
  return resized


def distort_color(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random brightness, saturation, hue and contrast, in that order (TF-slim's).

  Takes and returns float32 RGB in 0..255; the ranges are those of the Inception
  preprocessing: brightness +-32/255, saturation and contrast x0.5..1.5, hue +-0.2.
  """
  brightness_seed, saturation_seed, hue_seed, contrast_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  x = image / _MAX_PIXEL
  x = tf.image.stateless_random_brightness(x, _MAX_BRIGHTNESS_DELTA, brightness_seed)
  x = tf.image.stateless_random_saturation(x, *_SATURATION_RANGE, saturation_seed)
  x = tf.image.stateless_random_hue(x, _MAX_HUE_DELTA, hue_seed)
  x = tf.image.stateless_random_contrast(x, *_CONTRAST_RANGE, contrast_seed)
  return tf.clip_by_value(x, 0.0, 1.0) * _MAX_PIXEL


def to_pixels(image: tf.Tensor) -> tf.Tensor:
  """float RGB on 0..255 rounded to uint8 pixels, what the pipelines hand to the step."""
  return tf.saturate_cast(tf.round(image), tf.uint8)


def shorter_side_size(height: tf.Tensor, width: tf.Tensor, side: int) -> tf.Tensor:
  """[height, width] scaled, keeping the aspect ratio, so the shorter side is `side`."""
  scale = side / tf.cast(tf.minimum(height, width), tf.float64)
  new_height = tf.where(height <= width, side,
                        tf.cast(tf.round(tf.cast(height, tf.float64) * scale), tf.int32))
  new_width = tf.where(width < height, side,
                       tf.cast(tf.round(tf.cast(width, tf.float64) * scale), tf.int32))
  return tf.stack([new_height, new_width])


def resize_shorter_side(image: tf.Tensor, side: int) -> tf.Tensor:
  """Resizes, keeping the aspect ratio, so the shorter side is `side`; float32."""
  shape = tf.shape(image)
  resized = tf.image.resize(image, shorter_side_size(shape[0], shape[1], side),
                            antialias=True)
  return tf.clip_by_value(resized, 0.0, _MAX_PIXEL)


def eval_side(image_size: int, resize_ratio: float) -> int:
  """The shorter side that evaluation resizes to before cropping `image_size`."""
  side = round(image_size * resize_ratio)
  if side < image_size:
    raise errors.ConfigError(
        f'eval_resize_ratio={resize_ratio} resizes the shorter side to '
        f'{side} < image_size={image_size}; use a ratio >= 1.')
  return side


def decode_center_crop(image_bytes: tf.Tensor, image_size: int,
                       resize_ratio: float) -> tf.Tensor:
  """The evaluation crop: the centred `image_size` square of the image resized so that
  its shorter side is `eval_side`; float32 in 0..255.

  Only the window of the image that the crop's pixels are filtered from is decoded
  (JPEGs) and resampled: the same antialiased bilinear filter as `resize_shorter_side`
  (`tf.image.resize`'s), at the same scale and sample positions, gives the same pixels
  as resizing the whole image and cropping, without the work on the rest.
  """
  side = eval_side(image_size, resize_ratio)

  def scales(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    return (tf.cast(shorter_side_size(height, width, side), tf.float32)
            / tf.cast(tf.stack([height, width]), tf.float32))

  def window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The crop's sources in the image: its span, widened by the filter's radius."""
    scale = scales(height, width)
    offset = tf.cast((shorter_side_size(height, width, side) - image_size) // 2, tf.float32)
    margin = tf.math.ceil(tf.maximum(1 / scale, 1.0)) + 1  # the filter's reach, and rounding
    start = tf.maximum(tf.cast(tf.floor(offset / scale - margin), tf.int32), 0)
    end = tf.minimum(tf.cast(tf.math.ceil((offset + image_size) / scale + margin), tf.int32),
                     tf.stack([height, width]))
    return tf.concat([start, end - start], axis=0)

  image, size = decode_and_crop_with_size(image_bytes, window)
  height, width = size[0], size[1]
  box = window(height, width)
  scale = scales(height, width)
  offset = tf.cast((shorter_side_size(height, width, side) - image_size) // 2, tf.float32)
  # ScaleAndTranslate samples output pixel i at source (i + 0.5 - t) / scale: shifting by
  # t = start * scale - offset lands the crop's pixels where the whole image's were.
  resized = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(image, tf.float32)[None], size=[image_size, image_size], scale=scale,
      translation=tf.cast(box[:2], tf.float32) * scale - offset, kernel_type='triangle',
      antialias=True)[0]
  return tf.clip_by_value(resized, 0.0, _MAX_PIXEL)


def corner_and_center_boxes(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
  """The `size` x `size` boxes at the 4 corners and the centre of an image: [5, 4].

  Order: top-left, top-right, bottom-left, bottom-right, centre.
  """
  bottom, right = height - size, width - size
  ys = tf.stack([0, 0, bottom, bottom, bottom // 2])
  xs = tf.stack([0, right, 0, right, right // 2])
  sizes = tf.fill([5], size)
  return tf.stack([ys, xs, sizes, sizes], axis=1)


def square_boxes(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """The 3 squares of side min(height, width) along the longer side: [3, 4].

  Order: left, centre, right for landscape images; top, centre, bottom for portrait.
  """
  side = tf.minimum(height, width)
  along = tf.stack([0, (tf.maximum(height, width) - side) // 2,
                    tf.maximum(height, width) - side])
  across = tf.zeros([3], tf.int32)
  landscape = width >= height
  ys = tf.where(landscape, across, along)
  xs = tf.where(landscape, along, across)
  sides = tf.fill([3], side)
  return tf.stack([ys, xs, sides, sides], axis=1)


class MultiCrop(NamedTuple):
  """Crops of one image and where each comes from.

  Crop i is `boxes[i]` of the image resized so that its shorter side is `sides[i]`,
  resized to the crop size when the box is larger, and mirrored if `flipped[i]`.
  The second half of the crops mirrors the first half, in the same order.
  """
  images: tf.Tensor  # [N, size, size, 3] float32
  sides: tf.Tensor  # [N] int32
  boxes: tf.Tensor  # [N, 4] int32: (y, x, height, width)
  flipped: tf.Tensor  # [N] bool


def _crops_of(image: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
  """Crops each box of `boxes` ([K, 4], K static) and resizes it to size x size."""
  crops = [resize(crop_to_box(image, box), size) for box in tf.unstack(boxes)]
  return tf.stack(crops)


def _with_mirrors(images: tf.Tensor, sides: tf.Tensor, boxes: tf.Tensor) -> MultiCrop:
  """Appends the mirror image of every crop to `images` and describes all of them."""
  count = boxes.shape[0]
  return MultiCrop(
      images=tf.concat([images, tf.reverse(images, axis=[2])], axis=0),
      sides=tf.tile(sides, [2]),
      boxes=tf.tile(boxes, [2, 1]),
      flipped=tf.repeat([False, True], count))


def warn_if_mirrors_unseen(crops: int, random_flip: bool) -> None:
  """Warns when multi-crop evaluation mirrors images a model never saw mirrored."""
  if crops > 1 and not random_flip:
    logging.warning('%d crops include mirrored images, but this model was trained without '
                    'random flips (random_flip=False; e.g. digits or text, where a mirror '
                    'changes the class): its mirrored predictions may be wrong. Use crops=1 '
                    'or train with flips.', crops)


def ten_crop(image: tf.Tensor, image_size: int, resize_ratio: float) -> MultiCrop:
  """The 10-crop evaluation: 4 corners and centre of the resized image, and mirrors.

  The image is first resized so its shorter side is `eval_side(image_size,
  resize_ratio)`.
  """
  side = eval_side(image_size, resize_ratio)
  resized = resize_shorter_side(image, side)
  shape = tf.shape(resized)
  boxes = corner_and_center_boxes(shape[0], shape[1], image_size)
  crops = _crops_of(resized, boxes, image_size)
  return _with_mirrors(crops, tf.fill([boxes.shape[0]], side), boxes)


def _multi_scale_boxes(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
  """The 18 boxes of one scale of `multi_scale_crop`: [18, 4].

  For each square (`square_boxes` order): its corner and centre boxes of `size`
  (`corner_and_center_boxes` order), then the square itself.
  """
  per_square = []
  for square in tf.unstack(square_boxes(height, width)):
    offset = tf.stack([square[0], square[1], 0, 0])
    per_square.append(corner_and_center_boxes(square[2], square[3], size) + offset)
    per_square.append(square[None])
  return tf.concat(per_square, axis=0)


def multi_scale_crop(image: tf.Tensor, image_size: int) -> MultiCrop:
  """The paper's 144 crops: 4 scales x 3 squares x 6 crops x 2 mirrors.

  For each shorter side in `MULTI_SCALE_SIDES` (scaled by image_size / 224), the
  resized image gives 3 squares (`square_boxes`); each square gives its 4 corner and
  centre crops of `image_size` and the whole square resized to `image_size`. The
  unmirrored crops come scale by scale, in `_multi_scale_boxes` order, then the
  mirrors.
  """
  images, sides, boxes = [], [], []
  for paper_side in MULTI_SCALE_SIDES:
    side = round(paper_side * image_size / _PAPER_IMAGE_SIZE)
    resized = resize_shorter_side(image, side)
    shape = tf.shape(resized)
    scale_boxes = _multi_scale_boxes(shape[0], shape[1], image_size)
    images.append(_crops_of(resized, scale_boxes, image_size))
    sides.append(tf.fill([scale_boxes.shape[0]], side))
    boxes.append(scale_boxes)
  return _with_mirrors(*(tf.concat(parts, axis=0) for parts in (images, sides, boxes)))


@dataclasses.dataclass(frozen=True)
class TrainPreprocess:
  """Training preprocessing: (encoded image, seed [2]) -> uint8 [size, size, 3].

  `crop` is 'inception' or 'center'. The Inception crop (`sample_inception_box`, fused
  with JPEG decoding) is resized to `image_size` bilinearly, or by a method drawn from
  `RESIZE_METHODS` if `random_resize_method`. The centre crop is the one evaluation
  takes (bilinear). Then come the optional `distort_color`, `to_pixels` and the
  optional random flip (on uint8, the cheapest place; it commutes with the others).
  """
  image_size: int
  crop: str = 'inception'
  area_range: Sequence[float] = (0.08, 1.0)
  aspect_range: Sequence[float] = (3 / 4, 4 / 3)
  random_flip: bool = True
  color_distortion: bool = False
  random_resize_method: bool = False
  eval_resize_ratio: float = 256 / 224

  def __post_init__(self):
    if self.crop not in ('inception', 'center'):
      raise errors.ConfigError(f"crop={self.crop!r}; use 'inception' or 'center'.")
    low, high = self.area_range
    if not 0 < low <= high <= 1:
      raise errors.ConfigError(
          f'crop_area_range={tuple(self.area_range)}; '
          'use 0 < low <= high <= 1.')
    low, high = self.aspect_range
    if not 0 < low <= high:
      raise errors.ConfigError(
          f'crop_aspect_range={tuple(self.aspect_range)}; '
          'use 0 < low <= high.')
    eval_side(self.image_size, self.eval_resize_ratio)

  def __call__(self, image_bytes: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    crop_seed, resize_seed, flip_seed, color_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    if self.crop == 'center':
      image = decode_center_crop(image_bytes, self.image_size, self.eval_resize_ratio)
    else:
      image = self._inception_crop(image_bytes, crop_seed, resize_seed)
    if self.color_distortion:
      image = distort_color(image, color_seed)
    image = to_pixels(image)
    if self.random_flip:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image

  def _inception_crop(self, image_bytes: tf.Tensor, crop_seed: tf.Tensor,
                      resize_seed: tf.Tensor) -> tf.Tensor:
    """The Inception crop, resized to `image_size` x `image_size`."""
    image = decode_and_crop(
        image_bytes, lambda height, width: sample_inception_box(
            height, width, crop_seed, self.area_range, self.aspect_range))
    if self.random_resize_method:
      return random_method_resize(image, self.image_size, resize_seed)
    return resize(image, self.image_size)


@dataclasses.dataclass(frozen=True)
class EvalPreprocess:
  """Evaluation preprocessing: encoded image -> uint8 pixels of `output_shape`.

  `crops=1`: `decode_center_crop`; `crops=10`: `ten_crop`; `crops=144`:
  `multi_scale_crop`; each rounded by `to_pixels`.
  """
  image_size: int
  resize_ratio: float = 256 / 224
  crops: int = 1

  def __post_init__(self):
    if self.crops not in config_lib.CROPS:
      *others, last = config_lib.CROPS
      raise errors.ConfigError(
          f'crops={self.crops}; use {", ".join(map(str, others))} or {last}.')
    eval_side(self.image_size, self.resize_ratio)

  @property
  def output_shape(self) -> tuple[int, ...]:
    """[size, size, 3] for one crop, [crops, size, size, 3] for several."""
    image_shape = (self.image_size, self.image_size, 3)
    return image_shape if self.crops == 1 else (self.crops, *image_shape)

  def __call__(self, image_bytes: tf.Tensor) -> tf.Tensor:
    if self.crops == 1:
      image = decode_center_crop(image_bytes, self.image_size, self.resize_ratio)
    elif self.crops == 10:
      image = ten_crop(decode_rgb(image_bytes), self.image_size, self.resize_ratio).images
    else:
      image = multi_scale_crop(decode_rgb(image_bytes), self.image_size).images
    return to_pixels(image)
