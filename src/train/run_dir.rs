//! One run per out_dir: a lock held for the whole run, so a second run on the same directory is
//! refused instead of interleaving checkpoints and `metrics.jsonl`; and a new run (any init_from
//! but resume) moves an earlier run's files into `out_dir/previous-N/` rather than mixing with
//! them, so `sample --out_dir` and `eval arithmetic` see only the new run and nothing is lost.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Everything a run writes into its out_dir (checkpoints with their save leftovers, metrics).
const RUN_FILES: &[&str] = &[
    "best",
    "best.old",
    "best.tmp",
    "latest",
    "latest.old",
    "latest.tmp",
    "metrics.jsonl",
];

/// The held lock on an out_dir; the kernel releases it when this is dropped or the process dies,
/// so a killed run never leaves a stale lock behind.
pub struct RunLock {
    _file: File,
    out_dir: PathBuf,
}

/// Creates `out_dir` if needed and locks it for this process, or says which run holds it.
pub fn lock(out_dir: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create out_dir {}", out_dir.display()))?;
    let path = out_dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns for the lifetime of the returned lock.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "out_dir {} is in use: another training run is using it; wait for it to finish or pass a different --out_dir",
                out_dir.display()
            );
        }
        bail!("cannot lock {}: {err}", path.display());
    }
    Ok(RunLock {
        _file: file,
        out_dir: out_dir.to_path_buf(),
    })
}

impl RunLock {
    /// Before a new run writes into the locked out_dir: moves an earlier run's files into the first
    /// free `out_dir/previous-N/` and says so in `log`. Returns where they went, if anywhere.
    pub fn set_aside_previous(&self, log: &mut dyn Write) -> Result<Option<PathBuf>> {
        let out_dir = &self.out_dir;
        let found: Vec<&str> = RUN_FILES
            .iter()
            .copied()
            .filter(|name| out_dir.join(name).symlink_metadata().is_ok())
            .collect();
        if found.is_empty() {
            return Ok(None);
        }
        let dest = (1..)
            .map(|n| out_dir.join(format!("previous-{n}")))
            .find(|d| d.symlink_metadata().is_err())
            .context("no free previous-N name")?;
        std::fs::create_dir(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
        for name in &found {
            let (from, to) = (out_dir.join(name), dest.join(name));
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        }
        writeln!(
        log,
        "note: {} held an earlier run: moved its {} to {} (sample or resume it with --out_dir={})",
        out_dir.display(),
        found.join(", "),
        dest.display(),
        dest.display()
    )?;
        Ok(Some(dest))
    }
}
