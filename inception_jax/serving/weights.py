"""Official pretrained GoogLeNet weight files by name: where they live, fetched once and checked.

`fetch('torchvision')` or `fetch('caffe')` returns the local path of the file,
downloading it into the cache directory first if it is not there:

  * cache: `$INCEPTION_JAX_CACHE`, else `$XDG_CACHE_HOME/inception_jax`, else
    `~/.cache/inception_jax`; a file is kept as `<cache>/weights/<name in the URL>`.
  * check: every use hashes the file, cached or new, against its published checksum
    (torchvision: the sha256 prefix in the file's name, as `torch.hub`'s
    `check_hash=True` does; BVLC Caffe: the sha1 of its model zoo readme).
  * atomic: a download goes to a temporary file beside the final name and is renamed
    only once its checksum holds, so a partial or wrong file never sits at that name.
  * offline: a copy put at the cache path by hand is used (and checked) as if
    downloaded.

Every failure (no network, HTTP error, bad checksum, damaged cached file) is a
`errors.UserError` whose one-line message names the URL, the cause and the path
to put the file at by hand.
"""

import dataclasses
import hashlib
import http.client
import os
import pathlib
import re
import sys
import tempfile
from typing import BinaryIO
import urllib.error
import urllib.parse
import urllib.request

from inception_jax import errors

CACHE_ENV = 'INCEPTION_JAX_CACHE'
TIMEOUT_S = 60  # per socket operation (connect, each read), not for the whole download
_CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r'-([a-f0-9]*)\.')  # torch.hub.HASH_REGEX


def file_name(url: str) -> str:
  """The file name a URL's path ends in (the name the file is cached under)."""
  return pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name


@dataclasses.dataclass(frozen=True)
class Checksum:
  """A file's expected digest: hashlib `algorithm`, hex `digest`, whole or a `prefix` of it."""
  algorithm: str
  digest: str
  prefix: bool = False

  def matches(self, found: str) -> bool:
    """Whether a file whose hex digest is `found` passes this check."""
    if self.prefix:
      return found[:len(self.digest)] == self.digest
    return found == self.digest

  def describe(self) -> str:
    return f"{self.algorithm} {'starting with ' if self.prefix else ''}{self.digest}"


def sha256_prefix_in_name(url: str) -> Checksum:
  """torchvision's check: the sha256 must start with the hex between '-' and '.' in the name.

  The rule of `torch.hub.load_state_dict_from_url(check_hash=True)`, e.g.
  'googlenet-1378be20.pth' -> sha256 starting with '1378be20'. Unlike torch.hub, a
  name without such a prefix is refused rather than left unchecked.
  """
  match = _HASH_IN_NAME.search(file_name(url))
  if not match or not match.group(1):
    raise ValueError(f'{url}: no sha256 prefix in the file name (name-<hex>.ext)')
  return Checksum('sha256', match.group(1), prefix=True)


@dataclasses.dataclass(frozen=True)
class WeightFile:
  """An official weight file: where to download it and the checksum it must have."""
  url: str
  check: Checksum


TORCHVISION_URL = 'https://download.pytorch.org/models/googlenet-1378be20.pth'
CAFFE_URL = 'http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel'
# The sha1 published in BVLC/caffe models/bvlc_googlenet/readme.md (`sha1:`).
CAFFE_SHA1 = '405fc5acd08a3bb12de8ee5e23a96bec22f08204'

OFFICIAL: dict[str, WeightFile] = {
    'torchvision': WeightFile(TORCHVISION_URL, sha256_prefix_in_name(TORCHVISION_URL)),
    'caffe': WeightFile(CAFFE_URL, Checksum('sha1', CAFFE_SHA1)),
}


def cache_dir() -> pathlib.Path:
  """The directory weight files are cached under, so that each downloads once per user."""
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
  if os.environ.get('XDG_CACHE_HOME'):
    return pathlib.Path(os.environ['XDG_CACHE_HOME']).expanduser() / 'inception_jax'
  return pathlib.Path('~/.cache/inception_jax').expanduser()


def cached_path(name: str) -> pathlib.Path:
  """Where the official file `name` ('torchvision', 'caffe') is kept, or is to be put by hand."""
  return cache_dir() / 'weights' / file_name(_entry(name).url)


def hexdigest(path: pathlib.Path, algorithm: str) -> str:
  """The hex digest of a file's bytes, read in chunks so that large files stay out of memory."""
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _entry(name: str) -> WeightFile:
  if name not in OFFICIAL:
    raise errors.UserError(f'no official weight file {name!r}; known: {sorted(OFFICIAL)}')
  return OFFICIAL[name]


def _megabytes(size: int) -> str:
  return f'{size / 1e6:.1f} MB'


def _copy(response: BinaryIO, out: BinaryIO, total: int | None, progress: bool) -> int:
  """Copies the response body to `out`, progress on stderr every tenth (or 50 MB); returns bytes."""
  done, shown = 0, 0
  step = total // 10 if total else 50_000_000
  while chunk := response.read(_CHUNK):
    out.write(chunk)
    done += len(chunk)
    if progress and step and done - shown >= step:
      shown = done
      of = f' / {_megabytes(total)}' if total else ''
      print(f'  {_megabytes(done)}{of}', file=sys.stderr, flush=True)
  return done


def _download(url: str, destination: pathlib.Path, progress: bool) -> None:
  """Downloads `url` to `destination` (a temporary file); raises OSError or HTTPException."""
  request = urllib.request.Request(url, headers={'User-Agent': 'inception_jax'})
  with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, \
      open(destination, 'wb') as out:
    length = response.headers.get('Content-Length')
    total = int(length) if length and length.isdigit() else None
    done = _copy(response, out, total, progress)
  if total is not None and done != total:
    raise http.client.IncompleteRead(b'', total - done)


def _reason(error: Exception) -> str:
  """A short cause for a failed download: 'HTTP 404 Not Found', 'Connection refused', ..."""
  if isinstance(error, urllib.error.HTTPError):
    return f'HTTP {error.code} {error.reason}'
  if isinstance(error, urllib.error.URLError):
    reason = error.reason
    return getattr(reason, 'strerror', None) or str(reason)
  if isinstance(error, http.client.IncompleteRead):
    return f'the connection closed {error.expected} bytes before the end'
  return str(error) or type(error).__name__


def fetch(name: str, alternative: str = '', progress: bool = True) -> pathlib.Path:
  """The checked local copy of the official weight file `name`, downloaded once into the cache.

  So that converting published weights needs no manual download. `alternative`
  (e.g. 'or pass it as FILE') ends every error message;
  `progress`: the download's lines on stderr. Raises `errors.UserError`
  on any failure, naming the URL and the path to put the file at by hand.
  """
  entry = _entry(name)
  path = cached_path(name)
  otherwise = f' {alternative}' if alternative else ''
  if path.exists():
    found = hexdigest(path, entry.check.algorithm)
    if not entry.check.matches(found):
      raise errors.UserError(
          f'the cached {path} is not the file of {entry.url}: its {entry.check.algorithm} is '
          f'{found}, expected {entry.check.describe()}; delete it and run again to download '
          f'it anew{otherwise}.')
    return path
  by_hand = f'put a copy at {path} by hand{otherwise}'
  failed = f'could not download {entry.url}'
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.part',
                                                dir=path.parent)
  except OSError as e:
    raise errors.UserError(
        f'{failed}: cannot write to the cache directory {path.parent} ({e.strerror}); set '
        f'{CACHE_ENV} to a writable directory{otherwise}.') from None
  os.close(descriptor)
  partial = pathlib.Path(partial_name)
  try:
    if progress:
      print(f'downloading {entry.url} to {path}', file=sys.stderr, flush=True)
    try:
      _download(entry.url, partial, progress)
    except (OSError, http.client.HTTPException) as e:
      if isinstance(e, urllib.error.HTTPError):
        e.close()
      raise errors.UserError(f'{failed} ({_reason(e)}); {by_hand}.') from None
    found = hexdigest(partial, entry.check.algorithm)
    if not entry.check.matches(found):
      raise errors.UserError(
          f'downloaded {entry.url}, but its {entry.check.algorithm} is {found}, expected '
          f'{entry.check.describe()} (damaged in transit, or changed on the server), so it '
          f'was not kept; {by_hand}.')
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)
  if progress:
    print(f'saved {path} ({entry.check.algorithm} checked)', file=sys.stderr, flush=True)
  return path
