"""Metrics on validation frames and the baselines they are compared with."""
