"""The part of Caffe's `caffe.proto` that holds trained weights, built without protoc.

A `.caffemodel` is a serialized `caffe.NetParameter`. Only the fields that carry
layer names and weight blobs are declared here, with Caffe's field numbers, so
these classes read (and write) real caffemodels; every other field of a layer is
kept as an unknown field and ignored. The schema is built at import time from a
`FileDescriptorProto` in a private descriptor pool (protoc is not needed, and a
real `caffe_pb2` imported elsewhere does not clash):

  message BlobShape { repeated int64 dim = 1 [packed = true]; }
  message BlobProto {
    optional int32 num = 1; optional int32 channels = 2;  // legacy 4-D shape
    optional int32 height = 3; optional int32 width = 4;
    repeated float data = 5 [packed = true];
    optional BlobShape shape = 7;
    repeated double double_data = 8 [packed = true];
  }
  message LayerParameter { optional string name = 1; optional string type = 2;
                           repeated BlobProto blobs = 7; }
  message V1LayerParameter { optional string name = 4; optional int32 type = 5;
                             repeated BlobProto blobs = 6; }  // type: Caffe's enum
  message NetParameter { optional string name = 1; repeated V1LayerParameter layers = 2;
                         repeated LayerParameter layer = 100; }
"""

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

# V1LayerParameter.LayerType values of the layers that hold weights.
V1_CONVOLUTION = 4
V1_INNER_PRODUCT = 14

_FieldProto = descriptor_pb2.FieldDescriptorProto
_OPTIONAL = _FieldProto.LABEL_OPTIONAL
_REPEATED = _FieldProto.LABEL_REPEATED


def _field(name: str, number: int, kind: int, label: int = _OPTIONAL,
           message: str = '', packed: bool = False) -> _FieldProto:
  field = _FieldProto(name=name, number=number, type=kind, label=label)
  if message:
    field.type_name = f'.caffe.{message}'
  if packed:
    field.options.packed = True
  return field


def _file() -> descriptor_pb2.FileDescriptorProto:
  file = descriptor_pb2.FileDescriptorProto(name='inception_jax/caffe_weights.proto',
                                            package='caffe', syntax='proto2')
  messages = {
      'BlobShape': [_field('dim', 1, _FieldProto.TYPE_INT64, _REPEATED, packed=True)],
      'BlobProto': [
          _field('num', 1, _FieldProto.TYPE_INT32),
          _field('channels', 2, _FieldProto.TYPE_INT32),
          _field('height', 3, _FieldProto.TYPE_INT32),
          _field('width', 4, _FieldProto.TYPE_INT32),
          _field('data', 5, _FieldProto.TYPE_FLOAT, _REPEATED, packed=True),
          _field('shape', 7, _FieldProto.TYPE_MESSAGE, message='BlobShape'),
          _field('double_data', 8, _FieldProto.TYPE_DOUBLE, _REPEATED, packed=True),
      ],
      'LayerParameter': [
          _field('name', 1, _FieldProto.TYPE_STRING),
          _field('type', 2, _FieldProto.TYPE_STRING),
          _field('blobs', 7, _FieldProto.TYPE_MESSAGE, _REPEATED, message='BlobProto'),
      ],
      'V1LayerParameter': [
          _field('name', 4, _FieldProto.TYPE_STRING),
          _field('type', 5, _FieldProto.TYPE_INT32),
          _field('blobs', 6, _FieldProto.TYPE_MESSAGE, _REPEATED, message='BlobProto'),
      ],
      'NetParameter': [
          _field('name', 1, _FieldProto.TYPE_STRING),
          _field('layers', 2, _FieldProto.TYPE_MESSAGE, _REPEATED, message='V1LayerParameter'),
          _field('layer', 100, _FieldProto.TYPE_MESSAGE, _REPEATED, message='LayerParameter'),
      ],
  }
  for name, fields in messages.items():
    file.message_type.add(name=name).field.extend(fields)
  return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
_CLASSES = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f'caffe.{name}'))
            for name in ('BlobShape', 'BlobProto', 'LayerParameter', 'V1LayerParameter',
                         'NetParameter')}
BlobShape = _CLASSES['BlobShape']
BlobProto = _CLASSES['BlobProto']
LayerParameter = _CLASSES['LayerParameter']
V1LayerParameter = _CLASSES['V1LayerParameter']
NetParameter = _CLASSES['NetParameter']
