"""Images in, sharded global batches out: tfds data sets, image folders, preprocessing."""
