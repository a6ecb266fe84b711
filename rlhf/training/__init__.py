"""Django-free RLHF training: reward models from preference exports, and diffusion fine-tuning.

Entry points (dataclass configs and paths in, plain results out):

- ``reward_train.train_reward_model(config, data_path, output_dir, on_log=, should_stop=)`` with a config from
  ``configs.reward_preset(name, **overrides)`` (torch-free, like every config: the web process validates a
  run's config without importing torch); ``reward_model.load_reward_model(path)`` +
  ``reward_model.score(model, prompts, images)`` for every kind (a CLIP, or ``latent_reward``'s head on the
  shapes model's own VAE); backbones by name in ``reward_model.BACKBONES`` (their names in
  ``configs.BACKBONE_NAMES``); ``condition_on_source`` scores image edits beside their source
  (``score(..., sources=)``; ``conditioning.conditions_on_source(path)`` tells such a model without torch)
- ``dpo.train_dpo(config, data_path, output_dir, on_log=, should_stop=, on_checkpoint=)`` (Diffusion-DPO, LoRA;
  image-edit pairs train on their repainted region below their strength)
- ``ddpo.train_ddpo(config, output_dir, on_log=, should_stop=, on_checkpoint=)`` (DDPO, LoRA, registered
  reward functions); ``on_checkpoint(step, checkpoint_dir)``: see ``callbacks``
- ``lora.load_pipeline(base, lora_dir)`` + ``lora.eval_images(pipe, prompts, seeds)`` for checkpoint grids
"""
