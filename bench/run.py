"""``make bench``: run every benchmark and print its table."""

from __future__ import annotations

import sys

from bench import batching


def main() -> int:
    return batching.main([])


if __name__ == "__main__":
    sys.exit(main())
