"""proxdecode: reward-aware decoding for Hugging Face causal language models.

``pd.generate`` is a drop-in for ``model.generate`` that computes proximal rewards for
every candidate token at every step, can steer sampling with them, and returns per-step
rewards, log-probs and returns for on-policy training.
"""

from . import returns, rewards, rl
from .engine import NonFiniteLogitsError, generate
from .models import load_model, random_model
from .rewards import Rewards
from .rollout import Rollout
from .step import sample_step

__all__ = ["generate", "load_model", "random_model", "Rewards", "Rollout", "rewards",
           "returns", "rl", "sample_step", "NonFiniteLogitsError"]
__version__ = "0.1.0"
