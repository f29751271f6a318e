"""Training data: frames streamed from a dataset directory at the training resolution, in batches."""
