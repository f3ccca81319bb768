"""Image dimensions read from file headers (PNG, JPEG, GIF, BMP), without decoding.

Decoding allocates width x height x 3 bytes whatever the file's size: a PNG of a few
hundred KB can declare 20000 x 20000 pixels (1.2 GB decoded). Reading the header first
lets such files be refused before any decoder sees them.
"""

import struct
from typing import BinaryIO

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])


def declared_size(path: str) -> tuple[int, int] | None:
  """(width, height) that the file's header declares, or None if it is not readable.

  None covers unknown formats and truncated headers; the decoding check names those.
  """
  try:
    with open(path, 'rb') as f:
      head = f.read(32)
      if head.startswith(_PNG_SIGNATURE) and head[12:16] == b'IHDR':
        return struct.unpack('>II', head[16:24])
      if head[:6] in (b'GIF87a', b'GIF89a'):
        return struct.unpack('<HH', head[6:10])
      if head[:2] == b'BM' and len(head) >= 26:
        return _bmp_size(head)
      if head[:2] == b'\xff\xd8':
        f.seek(2)
        return _jpeg_size(f)
  except (OSError, struct.error):
    pass
  return None


def _bmp_size(head: bytes) -> tuple[int, int]:
  """A BMP's size: 16-bit fields in the old OS/2 header, 32-bit (height signed) after."""
  (header_size,) = struct.unpack('<I', head[14:18])
  if header_size == 12:
    return struct.unpack('<HH', head[18:22])
  width, height = struct.unpack('<ii', head[18:26])
  return abs(width), abs(height)  # negative height: rows stored top-down


def _jpeg_size(f: BinaryIO) -> tuple[int, int] | None:
  """Walks a JPEG's marker segments up to its start-of-frame, which holds the size."""
  while True:
    byte = f.read(1)
    if not byte:
      return None
    if byte != b'\xff':
      continue  # stray data between segments: resynchronise on the next marker
    marker = f.read(1)
    while marker == b'\xff':  # fill bytes
      marker = f.read(1)
    if not marker:
      return None
    code = marker[0]
    if code in _JPEG_STANDALONE or code == 0x00:
      continue
    (length,) = struct.unpack('>H', f.read(2))
    if code in _JPEG_SOF:
      height, width = struct.unpack('>xHH', f.read(5))
      return width, height
    if code == 0xDA:  # start of scan before any frame header: malformed
      return None
    f.seek(length - 2, 1)


def refusal(path: str, max_pixels: int) -> str | None:
  """Why `path` is refused unread, if its header declares more than `max_pixels` pixels."""
  size = declared_size(path)
  if size is None or size[0] * size[1] <= max_pixels:
    return None
  width, height = size
  return (f'declares {width}x{height} = {width * height:,} pixels, more than '
          f'config.max_image_pixels={max_pixels:,}; not decoded')
