"""Arbiter's training engine: recipes, losses, rollouts and rewards on plain PyTorch; knows nothing of Django."""
