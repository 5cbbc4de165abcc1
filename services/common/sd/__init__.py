"""Stable Diffusion model files, shared by the generator and the trainer: the models in the
store (`model_registry`), safe loading of SD 1.x checkpoints with no network
(`checkpoint_loader`, `checkpoint_layout`, `sd_configs`) and the CLIP tokenizer."""
