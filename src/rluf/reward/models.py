"""Every reward-model kind, imported so that `RewardModel.load` can find it by its `kind`."""

from .base import LengthRewardModel, RewardModel  # noqa: F401
from .ngram import NGramRewardModel  # noqa: F401
from .encoder import EncoderRewardModel  # noqa: F401
