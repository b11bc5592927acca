"""Scenes: cameras, COLMAP models, scene folders and Gaussian models."""
