"""Training: data, timestep samplers, latent caching, checkpoints and the accelerate loop."""
