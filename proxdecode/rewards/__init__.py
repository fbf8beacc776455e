"""Proximal reward families (``pd.rewards``) and the ``Rewards`` set that runs them."""

from .base import Reward, RewardContext, Rewards, RewardRun, token_strings
from .model import Fluency
from .rules import EndsWith, Keywords

__all__ = ["Reward", "RewardContext", "Rewards", "RewardRun", "EndsWith", "Keywords", "Fluency", "token_strings"]
