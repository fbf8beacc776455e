"""Bridges to trainers: ``pd.integrations.trl`` (TRL's GRPO reward functions, PPO's per-token layout)."""
