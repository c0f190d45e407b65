#!/usr/bin/env bash
# Regenerate every trace file of ../ from scratch: throwaway venvs under /tmp/tracegen (never the project's .venv),
# one per framework, from the pinned requirements-*.txt and package.json; then each generator against the fake
# model server on 127.0.0.1. See ../PROVENANCE.md.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${TRACEGEN_WORK:-/tmp/tracegen}"
mkdir -p "$WORK"

run() {  # venv requirements script
  local venv="$WORK/$1"
  [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q -r "$HERE/$2"; }
  "$venv/bin/python" "$HERE/$3"
}

run agents requirements-openai_agents.txt run_openai_agents.py
run langgraph requirements-langgraph.txt run_langgraph.py
run oaiv2 requirements-openai_v2.txt run_openai_v2.py
run pyd requirements-pydantic_ai.txt run_pydantic_ai.py

# Node resolves packages from the script's folder, so the script runs as a copy beside its node_modules.
mkdir -p "$WORK/vercel"
cp "$HERE/package.json" "$HERE/run_vercel_ai_sdk.mjs" "$WORK/vercel/"
(cd "$WORK/vercel" && npm install --silent --no-audit --no-fund && TRACEGEN_DIR="$HERE" node run_vercel_ai_sdk.mjs)

for f in "$HERE"/../*.jsonl; do python3 "$HERE/summarize.py" --counts "$f"; done
