"""Training data: a torch Dataset over the unified HDF5 shards, augmentation, sampling, collate."""
