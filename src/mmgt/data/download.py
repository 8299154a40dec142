"""``python -m mmgt.data.download``: the optional PATS video downloader, now :mod:`mmgt.data.pats.download`."""

from __future__ import annotations

import sys

from mmgt.data.pats.download import DEFAULT_FORMAT, download_videos, main, plan_downloads

__all__ = ["DEFAULT_FORMAT", "download_videos", "main", "plan_downloads"]

if __name__ == "__main__":
    sys.exit(main())
