"""The configs that ship with the package, run by name: `train --config imagenet_paper`."""
