"""autoresearch: an autonomous keep/discard research loop over a GPT training script."""

__version__ = "0.1.0"
