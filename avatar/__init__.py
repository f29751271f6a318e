"""Per-identity Gaussian-splatting talking-head avatars: video -> dataset -> avatar -> lip-synced video."""

__version__ = "0.1.0"
