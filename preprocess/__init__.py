"""Video -> dataset: the dataset builder behind `avatar preprocess`."""
