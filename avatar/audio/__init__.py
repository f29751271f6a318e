"""Audio: loading, features and their alignment to video frames."""
