#!/usr/bin/env bash
# Idempotent setup: a local virtual environment with environment.yml's pip section, plus offline MathJax.
# Prints what it did. Re-running with nothing changed installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DIFFLUNG_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  echo "setup: created virtual environment $VENV ($("$VENV/bin/python" --version))"
else
  echo "setup: virtual environment $VENV exists ($("$VENV/bin/python" --version))"
fi

# The pip section of environment.yml, read without needing PyYAML yet (one '- item' per line under 'pip:').
reqs=$(awk '/^ *- pip:/{f=1; next} f && /^ *- /{sub(/^ *- /, ""); print; next} f && !/^ *- / && !/^ *#/ && NF {f=0}' environment.yml)
stamp="$VENV/.difflung-installed"
want=$( (echo "$reqs"; cat pyproject.toml) | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: packages already match environment.yml (nothing installed)"
else
  echo "setup: installing environment.yml's pip section into $VENV ..."
  req_file="$VENV/difflung-requirements.txt"
  echo "$reqs" > "$req_file"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req_file" 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import difflung, torch" || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "setup: installed $(echo "$reqs" | wc -l) requirements (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
fi

# Offline math: MathJax 3 from the npm registry, copied into the book's static files (no CDN at view time).
mj=book/_static/mathjax/tex-svg.js
if [ -f "$mj" ]; then
  echo "setup: offline MathJax present ($mj)"
elif command -v npm >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent mathjax@3 >/dev/null && tar -xzf mathjax-*.tgz)
  mkdir -p "$(dirname "$mj")"
  cp "$tmp/package/es5/tex-svg.js" "$mj"
  rm -rf "$tmp"
  echo "setup: fetched MathJax 3 from npm into $mj"
else
  echo "setup: npm not found; the book's math will fall back to MathJax from a CDN at view time"
fi
