//! Files are never half-written: everything goes to a temporary file beside its target, is synced,
//! and is renamed into place, so a kill or a full disk leaves the old file or none. Callers map the
//! `io::Error`s to their own error types (which name the file).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An I/O error with the file it happened on (every error enum of the crate wraps this one).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// For `.map_err(FileError::at(path))`.
    pub fn at(path: &Path) -> impl Fn(io::Error) -> FileError + '_ {
        move |source| FileError { path: path.to_path_buf(), source }
    }
}

/// The folder a file goes into (`.` for a bare file name), created if missing.
fn parent_created(path: &Path) -> io::Result<&Path> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    Ok(dir)
}

/// Write whatever `fill` writes to `path` atomically: a temporary file in the same folder (created
/// if missing), synced, then renamed over `path`. If `fill` fails, nothing is left behind.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_created(path)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes a frame as parquet, atomically (a temp file beside `path`, then a rename), creating the
/// folder if needed.
pub fn write_parquet_atomic(frame: &polars::prelude::DataFrame, path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut frame = frame.clone();
    write_atomic_with(path, |file| {
        polars::prelude::ParquetWriter::new(file)
            .finish(&mut frame)
            .map(|_| ())
            .map_err(io::Error::other)
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// Read `path` as JSON of type `T`; the error names the file and, when it is not the JSON
/// expected, says what to do about it (`fix`).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, fix: &str) -> anyhow::Result<T> {
    use anyhow::Context;
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: {fix}", path.display()))
}

/// Write `value` as pretty JSON to `path` atomically; the error names the file.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use anyhow::Context;
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Write `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Copy `from` to `to` atomically (see [`write_atomic_with`]).
pub fn copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = fs::File::open(from)?;
    write_atomic_with(to, |f| io::copy(&mut src, f).map(|_| ()))
}

/// Remove the folder `dir` and everything in it; a missing folder is not an error.
pub fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Make `to` a hard link to `from`, or a copy where links cannot be made (another file system).
/// Only for files that are replaced by renames and never written in place.
pub fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(_) => fs::copy(from, to).map(|_| ()),
    }
}

/// Build the folder `dir` under a temporary name beside it, then move it into place (an older
/// `dir` is renamed aside first and removed after), so no reader ever sees it half-written. If
/// `fill` fails, the temporary folder is removed and an older `dir` is left as it was.
pub fn write_dir_atomic<E: From<io::Error>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = parent_created(dir)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let staging =
        tempfile::Builder::new().prefix(&format!(".{name}.partial-")).tempdir_in(parent)?;
    fill(staging.path())?;
    let staged = staging.keep();
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(dir, &old)?;
        fs::rename(&staged, dir)?;
        fs::remove_dir_all(&old)?;
    } else {
        fs::rename(&staged, dir)?;
    }
    Ok(())
}

/// Every file under `dir`, sorted (for fingerprints).
pub fn list_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(list_files(&p)?);
        } else {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(
            fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
        copy_atomic(&path, &dir.path().join("copy.txt")).unwrap();
        assert_eq!(sha256_file(&dir.path().join("copy.txt")).unwrap(), sha256_hex(b"second"));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );

        let folder = dir.path().join("run");
        write_dir_atomic(&folder, |d| fs::write(d.join("a"), b"1")).unwrap();
        let failed: io::Result<()> = write_dir_atomic(&folder, |d| {
            fs::write(d.join("b"), b"2")?;
            Err(io::Error::other("killed"))
        });
        assert!(failed.is_err());
        assert_eq!(
            fs::read(folder.join("a")).unwrap(),
            b"1",
            "the old folder survives a failed rewrite"
        );
        write_dir_atomic(&folder, |d| fs::write(d.join("c"), b"3")).unwrap();
        assert!(!folder.join("a").exists() && folder.join("c").exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            3,
            "sub, copy.txt and run; nothing staged left"
        );
    }
}
