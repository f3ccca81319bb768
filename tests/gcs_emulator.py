"""A local GCS for the gs:// tests: gcp-storage-emulator with two test-only patches.

  python tests/gcs_emulator.py PORT [BUCKET]

serves an in-memory GCS JSON API on 127.0.0.1:PORT holding the empty bucket
BUCKET (default 'bucket') until killed; prints 'ready' once it listens. Clients
reach it through STORAGE_EMULATOR_HOST (gcsfs) and TENSORSTORE_GCS_HTTP_URL
(tensorstore, which writes orbax's arrays).

The patches fill two gaps of the emulator (gcp-storage-emulator 2026.7.19) that
real GCS does not have:
  * media downloads carry no x-goog-generation header, so tensorstore (orbax's
    OCDBT format) fails with 'Malformed StorageGeneration' on its second
    manifest write;
  * there is no moveTo endpoint (501): gcsfs retries it for about 17 s per
    object before copying and deleting, so renaming a folder crawls.
"""

import sys
import time


def serve(port: int, bucket: str) -> None:
  # pylint: disable=import-outside-toplevel,protected-access
  from gcp_storage_emulator.handlers import objects

  plain_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = obj['generation']
      response['x-goog-metageneration'] = obj['metageneration']
    except Exception:  # pylint: disable=broad-except  # the handler itself answers 404
      pass
    return plain_download(request, response, storage, *args, **kwargs)

  def move_to(request, response, storage, *args, **kwargs):
    request.params['dest_bucket_name'] = request.params['bucket_name']
    objects.copy(request, response, storage)
    if response.status in (None, 200):
      objects._delete(storage, request.params['bucket_name'], request.params['object_id'])

  objects.download = download
  from gcp_storage_emulator import server  # its routes take objects.download when imported
  server.HANDLERS = ((r'^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
                      r'/moveTo/o/(?P<dest_object_id>.*[^/]+)$', {'POST': move_to}),
                     *server.HANDLERS)
  emulator = server.create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket)
  emulator.start()
  print('ready', flush=True)
  while True:
    time.sleep(3600)


if __name__ == '__main__':
  serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else 'bucket')
