"""`avatar render`: new audio -> a lip-synced mp4 of the avatar, streamed in chunks."""
