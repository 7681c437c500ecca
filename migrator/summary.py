"""The line that ends every run, embedded or fleet, worded as image-syncer and
image-migrator word it: scripts written for them read it."""

from __future__ import annotations


def summary_line(images: int, failed: int, generate_failed: int) -> str:
    """`Images(N) migration finished, F images tasks failed, G tasks generate failed`."""
    return (f"Images({images}) migration finished, {failed} images tasks failed, "
            f"{generate_failed} tasks generate failed")
