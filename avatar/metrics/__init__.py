"""Measures shared by training's validation and `avatar eval`: image quality, LPIPS, lip sync."""
