#!/usr/bin/env bash
# Fetch the plain-text data sets into the cache, sha256-checked:
#   data/austen/<novel>.txt  Jane Austen's six novels (Debian r-cran-janeaustenr 1.0.0-1), one line of the R
#                            character vector per line, exactly as stored (empty strings stay empty lines), UTF-8.
#                            Novels: emma mansfieldpark northangerabbey persuasion prideprejudice sensesensibility.
#   data/kjv.txt             King James Bible (Debian bible-kjv 4.38): `bible 'Gen1:1-Rev22:21'`, default 79-column layout.
# Usage: scripts/fetch-data.sh [austen] [kjv]   (default: both)
# The cache folder is $FLEXIDEPTH_CACHE, or ~/.cache/flexidepth. Files already present with the right hash are kept.
# Needs apt (Debian), run as root or with sudo. The Austen text is read with the PyPI package `rdata`, installed into a
# venv at $cache/venv (only when the Austen files have to be made).
set -euo pipefail
cache="${FLEXIDEPTH_CACHE:-$HOME/.cache/flexidepth}"
data="$cache/data"
mkdir -p "$data/austen"

AUSTEN_DEB_SHA=df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95  # r-cran-janeaustenr_1.0.0-1_all.deb
RDATA_VERSION=1.1.0
# sha256 of each output file
declare -A AUSTEN_SHA=(
  [emma]=7c67b5985c6d0de1efaeb5d342d52cb82c38083c40e2295129e30e87ee690ebe
  [mansfieldpark]=98bc90519cdf4ef663ad7de2734bb529435ef24f7abbde6bb1a50898871dafe9
  [northangerabbey]=51f91bbe0517db8e65cff009b097ce0a1836124c4e0532ac19e6c0cad982abed
  [persuasion]=8061549557aebd2fd6e353d18d9197cb707029112bd52d4d8b174583a925848a
  [prideprejudice]=dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d
  [sensesensibility]=105e1651fe93bed7130078578efd31e0c557d68667ba672ddc876f735b30fe09
)
KJV_SHA=82fa5f3788c6a9a010fb128a0f0bf588984b5888a82058520620eded59b033ea

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

check() { # file sha256 -> 0 if present and matching
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return 0
  $SUDO apt-get update -q >/dev/null
  apt_updated=1
}
apt_install() { # packages...
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 || {
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null
  }
}

# A python that can `import rdata`: a venv at $cache/venv, else (no venv module) pip --target $cache/pylib.
rdata_python() {
  local venv="$cache/venv"
  if "$venv/bin/python" -c 'import rdata' >/dev/null 2>&1; then echo "$venv/bin/python"; return; fi
  command -v python3 >/dev/null 2>&1 || apt_install python3 >&2
  if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      apt_install python3-venv >&2 || true
      python3 -m venv "$venv" >/dev/null 2>&1 || rm -rf "$venv"
    fi
  fi
  if [ -x "$venv/bin/python" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "rdata==$RDATA_VERSION" >&2
    echo "$venv/bin/python"; return
  fi
  # Fallback: no venv; install into a private folder (not system-wide).
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip >&2
  python3 -m pip install -q --disable-pip-version-check --target "$cache/pylib" "rdata==$RDATA_VERSION" >&2
  echo "env PYTHONPATH=$cache/pylib python3"
}

fetch_austen() {
  local all_ok=1 b
  for b in "${!AUSTEN_SHA[@]}"; do
    check "$data/austen/$b.txt" "${AUSTEN_SHA[$b]}" || all_ok=0
  done
  [ "$all_ok" = 1 ] && { echo "ok: $data/austen/ (6 novels)"; return; }

  local tmp="$work/austen"
  mkdir -p "$tmp"
  # (as root, apt may warn that it downloads unsandboxed: harmless)
  ( cd "$tmp" && { apt-get download -q r-cran-janeaustenr=1.0.0-1 >/dev/null 2>&1 ||
                   { apt_update && apt-get download -q r-cran-janeaustenr=1.0.0-1 >/dev/null; }; } )
  local deb="$tmp/r-cran-janeaustenr_1.0.0-1_all.deb"
  echo "$AUSTEN_DEB_SHA  $deb" | sha256sum -c --quiet || { echo "sha256 mismatch for $deb" >&2; exit 1; }
  dpkg -x "$deb" "$tmp/x"
  local db="$tmp/x/usr/lib/R/site-library/janeaustenr/data"

  local py; py=$(rdata_python)
  # shellcheck disable=SC2086  # $py may be "env PYTHONPATH=... python3"
  $py - "$db" "$data/austen" <<'EOF'
import os, struct, sys, warnings, zlib
import rdata
db, outdir = sys.argv[1], sys.argv[2]
warnings.simplefilter("ignore")  # rdata warns that .rdx is "an RDS file with the wrong extension"
# Lazy-load DB: the .rdx is a compressed RDS holding list(variables = list(name = c(offset, length)), ...);
# each .rdb record is a 4-byte big-endian uncompressed length then a zlib stream of an R XDR serialisation.
index = rdata.conversion.convert(rdata.parser.parse_file(os.path.join(db, "Rdata.rdx")))
rdb = open(os.path.join(db, "Rdata.rdb"), "rb").read()
for name, (off, length) in index["variables"].items():
    rec = rdb[int(off):int(off) + int(length)]
    raw = zlib.decompress(rec[4:])
    assert len(raw) == struct.unpack(">I", rec[:4])[0], name
    lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
    assert all(isinstance(s, str) for s in lines), f"{name}: NA or non-string element"
    out = os.path.join(outdir, f"{name}.txt")
    with open(out + ".part", "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(str(s) + "\n" for s in lines))
    os.replace(out + ".part", out)
    print(f"  {name}: {len(lines)} lines")
EOF
  for b in "${!AUSTEN_SHA[@]}"; do
    check "$data/austen/$b.txt" "${AUSTEN_SHA[$b]}" ||
      { echo "sha256 mismatch for $data/austen/$b.txt: $(sha256sum "$data/austen/$b.txt" | cut -d' ' -f1)" >&2; exit 1; }
  done
  echo "fetched: $data/austen/ (6 novels)"
}

fetch_kjv() {
  local out="$data/kjv.txt"
  check "$out" "$KJV_SHA" && { echo "ok: $out"; return; }
  command -v bible >/dev/null 2>&1 || apt_install bible-kjv
  # COLUMNS sets bible's line width: unset it so the file is the same from a terminal or not (79 columns).
  env -u COLUMNS bible 'Gen1:1-Rev22:21' </dev/null >"$out.part"
  check "$out.part" "$KJV_SHA" ||
    { echo "sha256 mismatch for $out: $(sha256sum "$out.part" | cut -d' ' -f1)" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"; echo "fetched: $out"
}

[ $# -eq 0 ] && set -- austen kjv
for d in "$@"; do
  case "$d" in
    austen) fetch_austen ;;
    kjv) fetch_kjv ;;
    *) echo "unknown data set '$d' (known: austen, kjv)" >&2; exit 2 ;;
  esac
done
