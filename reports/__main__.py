"""``python -m reports RUN_DIR [RUN_DIR ...] --out DIR``: render the HTML report (same as ``harness report``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from reports import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", default=None, help="report directory (default: RUN_DIR/report of the first run)")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--thumb-size", type=int, default=128)
    parser.add_argument("--no-ci", action="store_true", help="leave the +- 95%% intervals out of the tables")
    parser.add_argument("--screenshot", metavar="PNG", help="also save a headless-Chromium screenshot of index.html")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    index = render([Path(r) for r in args.runs], out, page_size=args.page_size, thumb_size=args.thumb_size,
                   ci=not args.no_ci)
    print(index)
    if args.screenshot:
        from reports.screenshot import screenshot

        print(screenshot(index, Path(args.screenshot)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
