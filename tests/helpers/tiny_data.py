"""Pipeline overrides for tiny demo logs (a few users, 500 items in 10 categories, 8- and 3-day windows,
caps 20 / 10 / 5): what the object-storage and cluster tests run their jobs on."""
from __future__ import annotations


def tiny_logs(users: int, history_days: int, impression_days: int, impressions_per_user_day: int) -> list[str]:
    return [f"generator.users={users}", f"generator.history_days={history_days}",
            f"generator.impression_days={impression_days}", "generator.mean_behaviors_per_user=30",
            "generator.max_behaviors_per_user=200", "generator.heavy_users=1",
            f"generator.impressions_per_user_day={impressions_per_user_day}", "generator.items=500",
            "generator.categories=10", "generator.topics=4", "validation.max_reject_ratio=0.5",
            "windows.long_days=8", "windows.short_days=3", "caps.long_cap=20", "caps.hard_k=10",
            "caps.short_cap=5"]
