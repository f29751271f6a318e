"""The avatar: Gaussian head, hash tri-plane features, audio-driven deformation, mouth and torso."""
