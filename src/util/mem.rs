//! The process's peak resident memory, phase by phase, and handing freed memory back. Table 2
//! reports each arm's peak while training and while predicting, so a run's own output says where
//! its memory goes (the speed issue asks for the peak and for waste to be found). Linux only: the
//! kernel's high-water mark `VmHWM` in `/proc/self/status`, which writing `5` to
//! `/proc/self/clear_refs` resets (Linux ≥ 4.0); elsewhere the calls report that nothing was
//! measured. A reset also lowers what `getrusage` (and so `/usr/bin/time`) reports as the
//! process's peak to the peak since the last reset, so [`Phase::start`] first folds the mark
//! into [`run_peak_resident_mb`], the peak of the whole process.
//!
//! Why [`release_free_memory`]: glibc keeps freed heap memory mapped for reuse. Measured on a
//! shortened laptop-bf16 Table 2 (32 examples per source, the same batches and lengths): predicting
//! the same 32 questions peaked at 3.5, 4.8, 4.7 and 6.1 GB in the four arms, growing with what
//! the arms' training had freed but not returned; with the memory handed back after each
//! training, 3.7, 3.1, 3.3 and 3.0 GB.

use std::sync::atomic::{AtomicU64, Ordering};

/// The highest `VmHWM` (kB) seen before a reset.
static RUN_PEAK_KB: AtomicU64 = AtomicU64::new(0);

/// One phase of a run whose peak resident memory is measured on its own.
pub struct Phase {
    /// Whether the high-water mark was reset when the phase started.
    reset: bool,
}

impl Phase {
    /// Starts a phase: the high-water mark is reset to the current resident size.
    pub fn start() -> Phase {
        Phase { reset: reset_peak_resident() }
    }

    /// The peak since the phase started, in MB (10⁶ bytes); `None` where the reset failed (the
    /// mark would include earlier phases) or `/proc/self/status` has no `VmHWM`.
    pub fn peak_mb(&self) -> Option<f64> {
        self.reset.then(peak_resident_mb).flatten()
    }
}

/// Resets the high-water mark to the current resident size (after folding it into the process's
/// peak). False where the kernel does not offer it.
fn reset_peak_resident() -> bool {
    if let Some(kb) = vm_hwm_kb() {
        RUN_PEAK_KB.fetch_max(kb, Ordering::Relaxed);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident memory since it started, across resets, in MB.
pub fn run_peak_resident_mb() -> Option<f64> {
    let now = vm_hwm_kb()?;
    Some(kb_to_mb(now.max(RUN_PEAK_KB.load(Ordering::Relaxed))))
}

/// Returns the heap memory freed so far to the system (glibc's `malloc_trim`), so that the next
/// phase starts from what is still in use. A no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

fn vm_hwm_kb() -> Option<u64> {
    parse_vm_hwm_kb(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The peak resident memory since the last reset (or the process's start), in MB.
fn peak_resident_mb() -> Option<f64> {
    vm_hwm_kb().map(kb_to_mb)
}

fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut fields = line["VmHWM:".len()..].split_whitespace();
    let value = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_water_mark_is_read_in_kilobytes() {
        let status = "Name:\tp2m\nVmPeak:\t  900 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(123_456));
        assert_eq!(parse_vm_hwm_kb("VmRSS:\t1 kB\n"), None);
        assert_eq!(parse_vm_hwm_kb("VmHWM:\t12 MB\n"), None);
    }

    /// On Linux (where the project runs its tests) a 256 MB buffer touched after a reset shows in
    /// the phase's peak (with 56 MB of slack for other tests' threads freeing memory meanwhile).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_phase_peak_sees_memory_touched_in_it() {
        let phase = Phase::start();
        assert!(phase.reset, "/proc/self/clear_refs could not be written");
        let before = peak_resident_mb().expect("VmHWM in /proc/self/status");
        let buffer = vec![1u8; 256 << 20];
        let after = phase.peak_mb().unwrap();
        assert!(buffer.iter().step_by(4096).all(|&b| b == 1));
        assert!(after >= before + 200.0, "peak {after} MB after 256 MB, {before} MB before");
        drop(buffer);
        // The whole process's peak survives the next reset (compared with slack: the kernel syncs
        // its per-thread RSS counters every 64 page faults, so two readings may differ slightly).
        assert!(Phase::start().reset);
        let run_peak = run_peak_resident_mb().unwrap();
        assert!(run_peak >= before + 200.0, "run peak {run_peak} MB, {before} MB before 256 MB");
    }
}
