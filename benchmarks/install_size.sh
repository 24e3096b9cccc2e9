#!/usr/bin/env bash
# Wall time and size of a fresh `pip install -e SRC` for each source checkout given, one after the
# other (so the second profits from the same warm pip cache as the first), and whether TensorFlow
# came with it:
#   git worktree add /tmp/before a6b87e1 && bash benchmarks/install_size.sh /tmp/before .
set -euo pipefail
for src in "$@"; do
  venv=$(mktemp -d)/venv
  start=$(date +%s)
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -e "$src" > /dev/null 2>&1
  end=$(date +%s)
  tf=$("$venv/bin/python" -c 'import importlib.util; print(importlib.util.find_spec("tensorflow") is not None)')
  echo "$src: install $((end - start)) s, size $(du -sm "$venv" | cut -f1) MiB, tensorflow: $tf"
  rm -rf "$(dirname "$venv")"
done
