//! Where things live. Everything has a default that works from a checkout with the shared mirror
//! beside it, and an environment variable to move it:
//!
//! | variable      | meaning                                   | default                          |
//! |---------------|-------------------------------------------|----------------------------------|
//! | `P2M_ROOT`    | the project folder (holds `data/`)        | the checkout this binary was built from |
//! | `P2M_MIRROR`  | a local read-only mirror of upstream data | `<root>/../shared/mirror` if it exists |
//! | `P2M_CACHE`   | downloaded and derived files              | `<root>/.cache`                  |
//! | `P2M_REPORTS` | generated reports                         | `<root>/reports`                 |
//! | `P2M_OFFLINE` | `1` forbids network access                | unset                            |

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub data: PathBuf,
    pub mirror: Option<PathBuf>,
    pub cache: PathBuf,
    pub reports: PathBuf,
    pub offline: bool,
}

impl Paths {
    /// Resolve all locations from the environment, falling back to the defaults above.
    pub fn from_env() -> Result<Self> {
        let root = match std::env::var_os("P2M_ROOT") {
            Some(root) => PathBuf::from(root),
            None => default_root(),
        };
        if !root.join("data").join("datasets.toml").is_file() {
            bail!(
                "{} does not look like a prompt2model-rs checkout (no data/datasets.toml); \
                 set P2M_ROOT to the project folder",
                root.display()
            );
        }
        let mirror = match std::env::var_os("P2M_MIRROR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if !dir.is_dir() {
                    bail!(
                        "P2M_MIRROR={} is not a folder; unset it or point it at the data mirror",
                        dir.display()
                    );
                }
                Some(dir)
            }
            None => {
                let beside = root.join("..").join("shared").join("mirror");
                beside.is_dir().then(|| normalize(&beside))
            }
        };
        let cache =
            std::env::var_os("P2M_CACHE").map(PathBuf::from).unwrap_or_else(|| root.join(".cache"));
        let reports = std::env::var_os("P2M_REPORTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("reports"));
        let offline = std::env::var("P2M_OFFLINE")
            .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        Ok(Paths { data: root.join("data"), root, mirror, cache, reports, offline })
    }

    /// Paths rooted at `root` with an explicit mirror and cache, for tests and embedding.
    pub fn with(root: &Path, mirror: Option<PathBuf>, cache: PathBuf, offline: bool) -> Self {
        Paths {
            root: root.to_path_buf(),
            data: root.join("data"),
            mirror,
            cache,
            reports: root.join("reports"),
            offline,
        }
    }
}

/// The working directory when it is a checkout (so a copied binary works from any checkout),
/// otherwise the checkout this crate was compiled in.
fn default_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        if cwd.join("data").join("datasets.toml").is_file() {
            return cwd;
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn normalize(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
