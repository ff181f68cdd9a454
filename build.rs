//! Records the toolchain and key dependency versions so run manifests can name them.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut versions = Vec::new();
    for name in ["polars", "plotters", "statrs", "reqwest", "hf-hub", "tokio"] {
        let needle = format!("name = \"{name}\"\nversion = \"");
        if let Some(pos) = lock.find(&needle) {
            let rest = &lock[pos + needle.len()..];
            if let Some(end) = rest.find('"') {
                versions.push(format!("{name}={}", &rest[..end]));
            }
        }
    }
    println!("cargo:rustc-env=P2M_DEP_VERSIONS={}", versions.join(","));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=P2M_RUSTC_VERSION={}", version.trim());
    record_build_commit();
    link_libtorch();
}

/// The commit the binary was built from (`-dirty` when tracked files differed), so a manifest
/// names the code even where the binary runs outside its checkout (a GPU machine, a cluster node).
fn record_build_commit() {
    // The sources the binaries are built from, too: an edit that is not yet staged leaves
    // `.git/index` as it was, and the binary must still say `-dirty`.
    for f in [".git/HEAD", ".git/index", "src", "experiments"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(c) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c}-dirty"),
            _ => c,
        },
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=P2M_BUILD_COMMIT={commit}");
}

/// tch 0.24 is built for libtorch 2.11.0 exactly. The PyPI wheel has no `build-version` file for
/// torch-sys to check, so the version is read from `torch/version.py` here and a mismatch stops
/// the build with a clear message. An rpath to `$LIBTORCH/lib` lets binaries and tests run
/// without LD_LIBRARY_PATH.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return; // torch-sys explains what is missing
    };
    let version_py = std::path::Path::new(&libtorch).join("version.py");
    if let Ok(text) = std::fs::read_to_string(&version_py) {
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("__version__ = "))
            .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
            .unwrap_or_default();
        if !version.starts_with("2.11.0") {
            panic!("LIBTORCH={libtorch} is PyTorch {version}, but tch 0.24 needs 2.11.0: run `bash scripts/setup.sh` or point LIBTORCH at a 2.11.0 install");
        }
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        for arg in ["-Wl,--no-as-needed", "-ltorch_cuda", "-ltorch", "-Wl,--as-needed"] {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
