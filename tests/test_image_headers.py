"""`image_headers`: sizes read from headers, against PIL's reading of the same files."""

import io
import struct

import numpy as np
from PIL import Image
import pytest

from inception_jax.data import image_headers
from helpers import write_png_bomb

WIDTH, HEIGHT = 37, 23


def _image(mode: str) -> Image.Image:
  pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize('name,mode,options', [
    ('baseline.jpg', 'RGB', {}),
    ('progressive.jpg', 'RGB', {'progressive': True}),
    ('exif.jpg', 'RGB', {'exif': Image.Exif()}),
    ('gray.jpg', 'L', {}),
    ('cmyk.jpg', 'CMYK', {}),
    ('rgba.png', 'RGBA', {}),
    ('palette.png', 'P', {}),
    ('first_frame.gif', 'P', {}),
    ('bottom_up.bmp', 'RGB', {}),
])
def test_declared_size_is_what_pil_reads(tmp_path, name, mode, options):
  path = tmp_path / name
  _image(mode).save(path, **options)
  with Image.open(path) as image:
    assert image_headers.declared_size(str(path)) == image.size == (WIDTH, HEIGHT)


def test_jpeg_size_is_found_past_large_metadata(tmp_path):
  exif = Image.Exif()
  exif[0x010E] = 'x' * 60_000  # ImageDescription: a 60 KB APP1 segment before the frame
  path = tmp_path / 'big_exif.jpg'
  _image('RGB').save(path, exif=exif, icc_profile=b'\0' * 3000)
  with Image.open(path) as image:
    assert image_headers.declared_size(str(path)) == image.size


def test_top_down_bmp_reports_a_positive_height(tmp_path):
  buffer = io.BytesIO()
  _image('RGB').save(buffer, 'BMP')
  data = bytearray(buffer.getvalue())
  data[22:26] = struct.pack('<i', -HEIGHT)  # rows stored top-down
  path = tmp_path / 'top_down.bmp'
  path.write_bytes(bytes(data))
  with Image.open(path) as image:
    assert image_headers.declared_size(str(path)) == image.size == (WIDTH, HEIGHT)


@pytest.mark.parametrize('data', [b'', b'not an image at all', b'\x89PNG\r\n\x1a\n',
                                  b'\xff\xd8\xff\xe0\x00\x10JFIF', b'GIF89'])
def test_unknown_or_truncated_headers_give_none(tmp_path, data):
  path = tmp_path / 'file'
  path.write_bytes(data)
  assert image_headers.declared_size(str(path)) is None
  assert image_headers.refusal(str(path), 1) is None


def test_a_bomb_is_refused_with_its_declared_size(tmp_path):
  bomb = write_png_bomb(tmp_path / 'bomb.png', 20000)
  assert image_headers.declared_size(bomb) == (20000, 20000)
  assert image_headers.refusal(bomb, 20000 * 20000) is None
  assert image_headers.refusal(bomb, 89_478_485) == (
      'declares 20000x20000 = 400,000,000 pixels, more than '
      'config.max_image_pixels=89,478,485; not decoded')
