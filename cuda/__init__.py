"""Our CUDA sources (the hash tri-plane encoding, forward and backward) and their just-in-time loader.

Installed as `avatar.cuda`; the `.cu`/`.cpp`/`.h` files are its package data, compiled on first use.
"""
