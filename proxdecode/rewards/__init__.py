"""Proximal reward families (``pd.rewards``) and the ``Rewards`` set that runs them."""

from . import registry
from .base import Reward, RewardContext, Rewards, RewardRun, token_strings
from .human import HumanFeedback
from .model import Fluency, KLPenalty
from .overlap import Overlap
from .rules import EndsWith, Keywords
from .sentiment import Sentiment
from .style import Capitalization, Length, Repetition, WordList
from .text import RewardError, TextReward
from .topic import Topic

__all__ = ["Reward", "RewardContext", "Rewards", "RewardRun", "RewardError", "token_strings",
           "EndsWith", "Keywords", "Repetition", "Length", "WordList", "Capitalization",
           "Sentiment", "Topic", "Overlap", "HumanFeedback", "Fluency", "KLPenalty", "TextReward", "registry"]
