"""Gaussians + camera -> image: one rasterizer interface with CUDA (gsplat) and torch backends; layer compositing."""
