"""Audio -> lip-synced mp4, streamed in chunks."""
