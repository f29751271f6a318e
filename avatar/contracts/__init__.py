"""Code shared by preprocessing, training, rendering and viewing.

Everything that must agree between the dataset builder and the consumers of a dataset lives here:
the on-disk format, the camera convention, audio loading and audio features, atomic writes.
"""
