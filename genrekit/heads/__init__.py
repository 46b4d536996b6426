"""Cheap multi-label heads on cached features: registry, heads, saving, and the leaderboard runner."""

from genrekit.heads.registry import HEADS, RUNNER_INPUTS, HeadSpec, create_head, get_head_spec, list_heads, register_head

__all__ = ["HEADS", "RUNNER_INPUTS", "HeadSpec", "create_head", "get_head_spec", "list_heads", "register_head"]
