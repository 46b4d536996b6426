"""Cheap multi-label heads on cached features: registry, heads, saving, and the leaderboard runner."""

from genrekit.heads.registry import HEADS, HeadSpec, create_head, get_head_spec, list_heads

__all__ = ["HEADS", "HeadSpec", "create_head", "get_head_spec", "list_heads"]
