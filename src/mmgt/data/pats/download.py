"""Optional helper: download the PATS source videos with yt-dlp (never needed by tests or training).

PATS does not distribute videos; researchers fetch them from YouTube themselves. Many links have gone since
2020, so expect gaps: ``task=pats`` reports those intervals as ``missing video`` in ``skipped.csv``.

Usage (yt-dlp must be installed: ``pip install yt-dlp``; respect the videos' terms of use)::

    python -m mmgt.data.download --csv pats/data/cmu_intervals_df.csv --out data/pats_videos \\
        --speakers chemistry oliver jon seth [--dry-run]

Each unique ``video_link`` is saved as ``<out>/<speaker>/<id>.<ext>`` where ``id`` is the YouTube id (or, for
non-YouTube links, the name :func:`mmgt.data.pats.intervals.video_ids` derives), which is what
:class:`mmgt.data.pats.intervals.VideoIndex` looks for. Already downloaded files are skipped, so the command can be
re-run after an interruption. Format: best mp4 video + m4a audio (as S2G-MDDiffusion's downloader).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from mmgt.data.media import VIDEO_EXTS
from mmgt.data.pats.intervals import read_intervals, video_ids

DEFAULT_FORMAT = "bv*[ext=mp4]+ba[ext=m4a]/b[ext=mp4]/b"


def plan_downloads(intervals_csv: str | Path, out_dir: str | Path, speakers: list[str] | None = None
                   ) -> list[tuple[str, str, Path]]:
    """Unique ``(link, id, target folder)`` still to fetch (links whose ``<id>.*`` already exists are left out)."""
    seen, plan = set(), []
    for iv in read_intervals(intervals_csv, speakers):
        ids = video_ids(iv.video_link)
        if not ids or iv.video_link in seen:
            continue
        seen.add(iv.video_link)
        folder = Path(out_dir) / iv.speaker
        if any((folder / f"{ids[0]}{ext}").exists() for ext in VIDEO_EXTS):
            continue
        plan.append((iv.video_link, ids[0], folder))
    return plan


def download_videos(intervals_csv: str | Path, out_dir: str | Path, speakers: list[str] | None = None,
                    fmt: str = DEFAULT_FORMAT, dry_run: bool = False) -> dict[str, str]:
    """Fetch every planned video with yt-dlp (Python API if importable, else the ``yt-dlp`` executable).

    Returns ``{link: "ok" | "failed: <reason>" | "planned"}``; failures don't stop the loop.
    """
    plan = plan_downloads(intervals_csv, out_dir, speakers)
    status: dict[str, str] = {}
    try:
        import yt_dlp  # type: ignore[import-not-found]
    except ImportError:
        yt_dlp = None
    exe = shutil.which("yt-dlp")
    if not dry_run and yt_dlp is None and exe is None:
        raise ImportError("downloading needs yt-dlp (pip install yt-dlp)")
    for link, vid, folder in plan:
        if dry_run:
            status[link] = "planned"
            continue
        folder.mkdir(parents=True, exist_ok=True)
        template = str(folder / f"{vid}.%(ext)s")
        try:
            if yt_dlp is not None:
                opts = {"format": fmt, "outtmpl": template, "merge_output_format": "mp4", "quiet": True,
                        "noprogress": True}
                with yt_dlp.YoutubeDL(opts) as ydl:
                    ydl.download([link])
            else:
                subprocess.run([exe, "-f", fmt, "--merge-output-format", "mp4", "-o", template, link], check=True)
            status[link] = "ok"
        except Exception as err:  # noqa: BLE001 - gone/private videos are expected
            status[link] = f"failed: {err}"
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", required=True, help="PATS cmu_intervals_df.csv")
    ap.add_argument("--out", required=True, help="folder for the videos (pats.videos_dir)")
    ap.add_argument("--speakers", nargs="*", default=["chemistry", "oliver", "jon", "seth"])
    ap.add_argument("--format", default=DEFAULT_FORMAT)
    ap.add_argument("--dry-run", action="store_true", help="only list what would be downloaded")
    args = ap.parse_args(argv)
    status = download_videos(args.csv, args.out, args.speakers or None, args.format, args.dry_run)
    for link, st in status.items():
        print(f"{st}\t{link}")
    failed = sum(st.startswith("failed") for st in status.values())
    print(f"{len(status)} videos: {len(status) - failed} {'planned' if args.dry_run else 'ok'}, {failed} failed",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
