"""Official weight files by name: fetched from a local HTTP server, checked, cached atomically.

Nothing here reaches the internet: `weights.OFFICIAL` is pointed at a server on
127.0.0.1 that serves generated files and counts the requests, and the cache at
tmp_path.
"""

import hashlib
import http.server
import io
import json
import pathlib
import socket
import threading

import jax
import numpy as np
import pytest

from inception_jax import cli
from inception_jax import errors
from inception_jax.serving import convert
from inception_jax.serving import evaluation
from inception_jax.serving import weights
from inception_jax.training import rundir
from helpers import convert_cli
from test_convert_caffe import caffe_blobs, caffemodel  # noqa: F401  pylint: disable=unused-import


class FileServer:
  """Files by name over HTTP on 127.0.0.1; `requests` lists the paths asked for."""

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.declared_lengths: dict[str, int] = {}  # a Content-Length other than the body's
    self.requests: list[str] = []
    files = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        files.requests.append(self.path)
        name = self.path.lstrip('/')
        if name not in files.files:
          self.send_error(404)
          return
        body = files.files[name]
        self.send_response(200)
        self.send_header('Content-Length', str(files.declared_lengths.get(name, len(body))))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        del args

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                   daemon=True)
    self.thread.start()

  def url(self, name: str) -> str:
    return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join()


@pytest.fixture
def server():
  files = FileServer()
  yield files
  files.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
  """The cache directory, through INCEPTION_JAX_CACHE."""
  monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def sha1(data: bytes) -> str:
  return hashlib.sha1(data).hexdigest()


def official(monkeypatch, name: str, url: str, check: weights.Checksum) -> None:
  monkeypatch.setitem(weights.OFFICIAL, name, weights.WeightFile(url, check))


def serve(server, monkeypatch, name: str, filename: str, data: bytes,
          check: weights.Checksum | None = None) -> str:
  """Serves `data` as `filename` and makes it the official file `name` (checked by sha1)."""
  server.files[filename] = data
  official(monkeypatch, name, server.url(filename), check or weights.Checksum('sha1', sha1(data)))
  return server.url(filename)


def refused_url(filename: str) -> str:
  """A URL on a local port nothing listens on."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/{filename}'


def assert_clear_error(error: pytest.ExceptionInfo, *parts: str) -> None:
  message = str(error.value)
  assert '\n' not in message
  for part in parts:
    assert part in message


def cache_contents(cache: pathlib.Path) -> list[str]:
  """Every file in the cache, temporary ones included."""
  return sorted(p.name for p in cache.rglob('*') if p.is_file())


def test_fetch_downloads_and_caches_once(server, cache, monkeypatch, capsys):
  data = np.random.default_rng(0).bytes(3_000_000)
  url = serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', data)
  path = weights.fetch('caffe')
  progress = capsys.readouterr().err
  assert path == cache / 'weights' / 'bvlc_googlenet.caffemodel' == weights.cached_path('caffe')
  assert path.read_bytes() == data
  assert f'downloading {url} to {path}' in progress and '3.0 MB / 3.0 MB' in progress
  assert server.requests == ['/bvlc_googlenet.caffemodel']
  assert weights.fetch('caffe', progress=False) == path
  assert len(server.requests) == 1  # the second fetch used (and checked) the cached copy
  assert cache_contents(cache) == ['bvlc_googlenet.caffemodel']  # no temporary file left


def test_bad_checksum_is_an_error_and_keeps_nothing(server, cache, monkeypatch):
  data = b'not the published file'
  url = serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', data,
              weights.Checksum('sha1', sha1(b'the published file')))
  with pytest.raises(errors.UserError) as error:
    weights.fetch('caffe', alternative='or pass the file', progress=False)
  assert_clear_error(error, url, f'sha1 is {sha1(data)}', str(weights.cached_path('caffe')),
                     'by hand or pass the file.')
  assert cache_contents(cache) == []


def test_connection_refused_is_an_error(cache, monkeypatch):
  url = refused_url('bvlc_googlenet.caffemodel')
  official(monkeypatch, 'caffe', url, weights.Checksum('sha1', '0' * 40))
  with pytest.raises(errors.UserError) as error:
    weights.fetch('caffe', progress=False)
  assert_clear_error(error, f'could not download {url} (', 'refused',
                     f'put a copy at {cache / "weights" / "bvlc_googlenet.caffemodel"} by hand')
  assert cache_contents(cache) == []


def test_http_404_is_an_error(server, cache, monkeypatch):
  official(monkeypatch, 'caffe', server.url('missing.caffemodel'),
           weights.Checksum('sha1', '0' * 40))
  with pytest.raises(errors.UserError) as error:
    weights.fetch('caffe', progress=False)
  assert_clear_error(error, server.url('missing.caffemodel'), 'HTTP 404',
                     str(cache / 'weights' / 'missing.caffemodel'))
  assert cache_contents(cache) == []


def test_truncated_download_is_an_error(server, cache, monkeypatch):
  data = b'x' * 1000
  serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', data)
  server.declared_lengths['bvlc_googlenet.caffemodel'] = 1500
  with pytest.raises(errors.UserError) as error:
    weights.fetch('caffe', progress=False)
  assert_clear_error(error, 'closed 500 bytes before the end')
  assert cache_contents(cache) == []


def test_damaged_cached_file_is_an_error_naming_it(server, cache, monkeypatch):
  serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', b'the published file')
  path = weights.cached_path('caffe')
  path.parent.mkdir(parents=True)
  path.write_bytes(b'the published fil')
  with pytest.raises(errors.UserError) as error:
    weights.fetch('caffe', progress=False)
  assert_clear_error(error, f'the cached {path} is not the file', 'delete it')
  assert not server.requests and path.read_bytes() == b'the published fil'


def test_copy_put_by_hand_is_used_offline(cache, monkeypatch):
  data = b'the published file'
  official(monkeypatch, 'caffe', refused_url('bvlc_googlenet.caffemodel'),
           weights.Checksum('sha1', sha1(data)))
  (cache / 'weights').mkdir(parents=True)
  (cache / 'weights' / 'bvlc_googlenet.caffemodel').write_bytes(data)
  assert weights.fetch('caffe', progress=False).read_bytes() == data


def test_torchvision_check_is_the_sha256_prefix_in_the_name(server, cache, monkeypatch):
  assert weights.OFFICIAL['torchvision'] == weights.WeightFile(
      'https://download.pytorch.org/models/googlenet-1378be20.pth',
      weights.Checksum('sha256', '1378be20', prefix=True))
  data = np.random.default_rng(1).bytes(100_000)
  prefix = hashlib.sha256(data).hexdigest()[:8]
  wrong = format(int(prefix, 16) ^ 1, '08x')
  for name, passes in ((f'googlenet-{prefix}.pth', True), (f'googlenet-{wrong}.pth', False)):
    server.files[name] = data
    check = weights.sha256_prefix_in_name(server.url(name))
    assert check == weights.Checksum('sha256', name[10:18], prefix=True)
    official(monkeypatch, 'torchvision', server.url(name), check)
    if passes:
      assert weights.fetch('torchvision', progress=False).read_bytes() == data
    else:
      with pytest.raises(errors.UserError, match=f'sha256 is {hashlib.sha256(data).hexdigest()}, '
                         f'expected sha256 starting with {wrong}'):
        weights.fetch('torchvision', progress=False)
  assert cache_contents(cache) == [f'googlenet-{prefix}.pth']
  with pytest.raises(ValueError, match='no sha256 prefix'):
    weights.sha256_prefix_in_name('https://example.org/googlenet.pth')


def test_caffe_check_is_the_whole_published_sha1(server, cache, monkeypatch):
  # BVLC/caffe models/bvlc_googlenet/readme.md, `sha1:`
  assert weights.OFFICIAL['caffe'] == weights.WeightFile(
      'http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel',
      weights.Checksum('sha1', '405fc5acd08a3bb12de8ee5e23a96bec22f08204'))
  data = np.random.default_rng(2).bytes(100_000)
  digest = hashlib.sha1(data).hexdigest()
  serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', data,
        weights.Checksum('sha1', digest[:8]))  # a prefix is not enough for a full digest
  with pytest.raises(errors.UserError, match=f'sha1 is {digest}, expected sha1 {digest[:8]}'):
    weights.fetch('caffe', progress=False)
  official(monkeypatch, 'caffe', server.url('bvlc_googlenet.caffemodel'),
           weights.Checksum('sha1', digest))
  assert weights.fetch('caffe', progress=False).read_bytes() == data


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.delenv(weights.CACHE_ENV, raising=False)
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  assert weights.cache_dir() == tmp_path / 'home' / '.cache' / 'inception_jax'
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert weights.cache_dir() == tmp_path / 'xdg' / 'inception_jax'
  monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / 'mine'))
  assert weights.cache_dir() == tmp_path / 'mine'
  assert weights.cached_path('torchvision') == tmp_path / 'mine' / 'weights' / 'googlenet-1378be20.pth'


def test_convert_arguments_take_the_file_or_not():
  parse = cli.build_parser().parse_args
  args = parse(['convert', 'torchvision', 'out'])
  assert (args.weights, args.out, args.transform_input) == (None, 'out', True)
  args = parse(['convert', 'torchvision', 'googlenet.pth', 'out', '--no-transform-input'])
  assert (args.weights, args.out, args.transform_input) == ('googlenet.pth', 'out', False)
  assert (parse(['convert', 'caffe', 'out']).caffemodel, parse(['convert', 'caffe', 'out']).out
          ) == (None, 'out')
  args = parse(['convert', 'caffe', 'bvlc_googlenet.caffemodel', 'out'])
  assert (args.caffemodel, args.out) == ('bvlc_googlenet.caffemodel', 'out')


def test_weights_file_given_as_out_is_refused(server, cache, monkeypatch, tmp_path):
  serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', b'the published file')
  with pytest.raises(errors.UserError, match='looks like a weights file.*CAFFEMODEL OUT'):
    convert_cli('caffe', str(tmp_path / 'bvlc_googlenet.caffemodel'))
  assert not server.requests and cache_contents(cache) == []


def test_download_failure_through_the_command_line_is_one_line(server, cache, monkeypatch,
                                                                tmp_path):
  official(monkeypatch, 'caffe', server.url('gone.caffemodel'),
           weights.Checksum('sha1', '0' * 40))
  with pytest.raises(SystemExit) as error:
    cli.main(['convert', 'caffe', str(tmp_path / 'run')])
  message = str(error.value.code)
  assert message.startswith(f"error: could not download {server.url('gone.caffemodel')} "
                            '(HTTP 404 ')
  assert '\n' not in message and 'convert caffe CAFFEMODEL OUT' in message
  assert str(cache / 'weights' / 'gone.caffemodel') in message
  assert not (tmp_path / 'run').exists()


def test_convert_caffe_without_a_file_downloads_and_converts(caffe_blobs, server, cache,
                                                             monkeypatch, tmp_path):
  data = caffemodel(caffe_blobs)
  serve(server, monkeypatch, 'caffe', 'bvlc_googlenet.caffemodel', data)
  convert_cli('caffe', str(tmp_path / 'run'))
  assert (cache / 'weights' / 'bvlc_googlenet.caffemodel').read_bytes() == data
  config = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert config['model'] == 'googlenet' and config['mean_rgb'] == [123.0, 117.0, 104.0]
  loaded = evaluation.load_model(tmp_path / 'run', rundir.load_config(tmp_path / 'run'))
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, convert.convert_caffe(data))
  assert loaded.meta['num_classes'] == 1000


def test_convert_torchvision_without_a_file_downloads_and_converts(server, cache, monkeypatch,
                                                                   tmp_path):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  torch.manual_seed(0)
  state_dict = torchvision.models.googlenet(weights=None, aux_logits=True,
                                            init_weights=False).state_dict()
  buffer = io.BytesIO()
  torch.save(state_dict, buffer)
  data = buffer.getvalue()
  filename = f'googlenet-{hashlib.sha256(data).hexdigest()[:8]}.pth'
  server.files[filename] = data
  official(monkeypatch, 'torchvision', server.url(filename),
           weights.sha256_prefix_in_name(server.url(filename)))
  convert_cli('torchvision', str(tmp_path / 'run'))
  assert (cache / 'weights' / filename).read_bytes() == data
  config = rundir.load_config(tmp_path / 'run')
  assert config.model == 'googlenet_bn' and tuple(config.mean_rgb) == (127.5,) * 3
  loaded = evaluation.load_model(tmp_path / 'run', config)
  jax.tree.map(np.testing.assert_array_equal, loaded.variables,
               convert.convert_torchvision(state_dict))
