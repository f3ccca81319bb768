"""Data sets that ship with the package; importing this registers them with tfds."""

from inception_jax.data.datasets.sklearn_digits import SklearnDigits

__all__ = ['SklearnDigits']
