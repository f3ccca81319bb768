"""`sklearn_digits`: scikit-learn's 1,797 handwritten 8x8 digits as a tfds data set.

The images come from `sklearn.datasets.load_digits`, which reads a file shipped inside
the scikit-learn wheel, so `download_and_prepare` works offline. Pixel values 0..16 are
scaled to 0..255 and stored as uint8 grayscale PNGs of shape (8, 8, 1).

The train/test split is fixed and stratified: examples are put in a seeded random
order (numpy's legacy `RandomState`, whose stream numpy keeps stable), each example is
keyed by its relative rank within its class, and the `_NUM_TEST` examples with the
smallest keys form the test split. Each class thus gives about 20% of its examples.
"""

import numpy as np
from sklearn import datasets as sklearn_datasets
import tensorflow_datasets as tfds

_NUM_TEST = 360  # of 1,797: 1,437 train / 360 test
_SPLIT_SEED = 0
_MAX_PIXEL = 16


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Returns the sorted example indices of each split for the given labels."""
  order = np.random.RandomState(_SPLIT_SEED).permutation(len(labels))
  ordered_labels = labels[order]
  ranks = np.empty(len(labels))
  for label in np.unique(labels):
    members = ordered_labels == label
    ranks[members] = (np.arange(members.sum()) + 0.5) / members.sum()
  by_rank = order[np.argsort(ranks, kind='stable')]
  return {'train': np.sort(by_rank[_NUM_TEST:]), 'test': np.sort(by_rank[:_NUM_TEST])}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, built offline."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 1,437 train / 360 test, stratified.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # everything is in the scikit-learn wheel
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * (255 / _MAX_PIXEL)).astype(np.uint8)[..., None]
    labels = digits.target
    return {
        split: self._generate_examples(images[indices], labels[indices], indices)
        for split, indices in split_indices(labels).items()
    }

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                         indices: np.ndarray):
    for image, label, index in zip(images, labels, indices):
      yield int(index), {'image': image, 'label': int(label)}
