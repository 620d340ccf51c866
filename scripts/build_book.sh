#!/usr/bin/env bash
# The main job: set up (idempotent), run every notebook of a profile with papermill, build the book.
# Usage: bash scripts/build_book.sh [PROFILE] [extra `python -m difflung run` arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-smoke}
shift || true
bash scripts/setup.sh
.venv/bin/python -m difflung run --profile "$profile" "$@"
.venv/bin/jupyter-book build book --quiet
.venv/bin/python -m difflung check-book --profile "$profile"
echo "The book is built: open $(pwd)/book/_build/html/index.html"
