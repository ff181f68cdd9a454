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
}
