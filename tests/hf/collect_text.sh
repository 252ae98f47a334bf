#!/usr/bin/env bash
# Copies a few hundred KB of plain text (TinyStories validation, WikiText-2 raw test) out of shared/data
# into DEST, so that it can travel with the working tree to the machine that runs make_references.py:
#
#   bash tests/hf/collect_text.sh tests/hf/text
#   python3 tests/hf/make_references.py --text tests/hf/text/*.txt ...
#
# Each file is the first BYTES_PER_FILE bytes of its source, cut back to the last whole line (so no UTF-8
# character is split). The WikiText file keeps its CRLF line endings on purpose (tests see '\r').
# RANKSCOPE_SHARED_DATA overrides where shared/data is (default: the repository's ../shared/data).
set -euo pipefail

readonly BYTES_PER_FILE=150000

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DEST_DIR" >&2
  exit 2
fi
dest=$1
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data=${RANKSCOPE_SHARED_DATA:-$repo_root/../shared/data}

# take SRC DST: the head of SRC, without its last (possibly cut) line.
take() {
  local src=$1 dst=$2
  if [[ ! -f $src ]]; then
    echo "$0: missing $src (see shared/data/SOURCES.md)" >&2
    exit 1
  fi
  head -c "$BYTES_PER_FILE" "$src" | sed '$d' >"$dst"
}

mkdir -p "$dest"
take "$data/tinystories/tinystories_val.txt" "$dest/tinystories_val_head.txt"
take "$data/wikitext-2-raw/wiki.test.raw" "$dest/wikitext2_raw_test_head.txt"
wc -c "$dest"/*.txt
