"""Experiment runners: the leaderboard of heads on one store, and fused runs over several stores."""
