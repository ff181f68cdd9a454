//! One process per folder: an advisory lock on a file inside it (`flock`, through std's
//! `File::try_lock`). The kernel releases the lock when the process ends, however it ends, so a
//! killed run never leaves a stale lock behind; the file itself stays and only says who held it
//! last. Two `p2m run` on the same run folder, two table cells or two Table 2 arms on the same
//! folder would otherwise both pay a teacher, and one would clear a stage folder the other writes.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
}

/// Who holds a lock, as its holder wrote it: `pid <n> since <time>: <command line>`.
fn holder_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    format!(
        "pid {} since {}: {}\n",
        std::process::id(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        args.join(" ")
    )
}

impl FolderLock {
    /// Lock `path` (created if missing, with its folder). When another process holds it: wait
    /// for it with `wait`, else fail with the holder named and both ways out.
    pub fn acquire(path: &Path, wait: bool) -> Result<FolderLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                let folder = path.parent().unwrap_or(path).display();
                if !wait {
                    bail!(
                        "{folder} is in use by another process ({holder}); wait for it to finish (or pass --wait to queue behind it), or use another --name"
                    );
                }
                eprintln!("waiting for {folder}: in use by {holder}");
                file.lock().with_context(|| format!("waiting for the lock {}", path.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        // The holder's line, for whoever finds the folder in use.
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| {
                file.write_all(holder_line().as_bytes())?;
                file.flush()
            })
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(FolderLock { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes it immediate and explicit.
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
    let text = text.trim();
    if text.is_empty() {
        "a process that has not written its name yet".into()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_naming_the_holder_and_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("run.lock");
        let held = FolderLock::acquire(&path, false).unwrap();
        // flock locks belong to the open file description: a second open in the same process
        // conflicts like another process would.
        let e = FolderLock::acquire(&path, false).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("--wait") && e.contains("in use"), "{e}");
        drop(held);
        let again = FolderLock::acquire(&path, false).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn a_waiting_lock_is_granted_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.lock");
        let held = FolderLock::acquire(&path, false).unwrap();
        let p = path.clone();
        let waiter = std::thread::spawn(move || FolderLock::acquire(&p, true).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!waiter.is_finished(), "it waits while the lock is held");
        drop(held);
        waiter.join().unwrap().unwrap();
    }
}
