#!/usr/bin/env bash
# Build the isolated environments of the legacy reward packages used by tests/rewards/test_legacy_crosscheck.py:
#   .venv-legacy/imagereward   image-reward 1.5 (+ its old transformers/timm/tokenizers, pinned, --no-deps)
#   .venv-legacy/hpsv2         hpsv2 1.2.0 (--no-deps; its wheel lacks the BPE vocab: copied from open_clip)
# Each venv sees the shared venv's site-packages (torch, numpy, PIL ...) through a .pth file placed AFTER its
# own site-packages, so its pinned packages win and torch is not installed twice.
# Idempotent: a venv whose stamp file matches the pins is left alone (a re-run takes ~1 s).
# Usage: scripts/legacy_rewards.sh [--force]     (run from anywhere; uses the repo's .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${FYP_SHARED_VENV:-$ROOT/.venv}"
DEST="$ROOT/.venv-legacy"
PY="$SHARED/bin/python"
SHARED_SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
FORCE="${1:-}"

IMAGEREWARD_PINS=(image-reward==1.5 timm==0.6.13 fairscale==0.4.13 openai-clip==1.0.1
                  transformers==4.44.2 tokenizers==0.19.1 huggingface_hub==0.24.7 "setuptools<81")
HPSV2_PINS=(hpsv2==1.2.0 "setuptools<81")

make_venv() {  # name, pins...
  local name="$1"; shift
  local venv="$DEST/$name" stamp="$DEST/$name/.fyp-pins"
  local want; want="$(printf '%s\n' "$@")"
  if [[ "$FORCE" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "legacy_rewards: $name up to date ($venv)"; return 0
  fi
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  local site; site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$SHARED_SITE" > "$site/zz_fyp_shared.pth"   # 'zz': after the venv's own packages
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$@"
  echo "$want" > "$stamp"
  echo "legacy_rewards: built $name ($venv)"
}

make_venv imagereward "${IMAGEREWARD_PINS[@]}"
make_venv hpsv2 "${HPSV2_PINS[@]}"

# hpsv2's wheel lacks the BPE vocab file its vendored open_clip tokenizer needs: open_clip ships the same file.
HPS_SITE="$("$DEST/hpsv2/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
VOCAB_DST="$HPS_SITE/hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz"
if [[ ! -f "$VOCAB_DST" ]]; then
  cp "$("$PY" -c 'import open_clip, os; print(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))')" "$VOCAB_DST"
fi
echo "legacy_rewards: ok"
