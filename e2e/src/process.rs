//! Starting child processes so that they never outlive the test process.
//!
//! * Every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG =
//!   SIGKILL`. (The parent-death signal fires when the *thread* that forked the child
//!   exits, so spawning from a short-lived test thread would kill shared children
//!   early; the spawner thread lives as long as the process.)
//! * Children and temporary directories are registered; an `atexit` handler kills the
//!   children and removes the directories of control planes that were never dropped
//!   (those kept in a `static` for all tests of a binary).
//! * Temporary directories of earlier test processes that died without cleanup are
//!   removed on the next start.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};

use anyhow::{Context, Result, anyhow};

/// Prefix of the temporary directories, followed by the owning process id.
pub(crate) const DIR_PREFIX: &str = "coldsite-e2e-";

/// Set to keep the temporary directories (logs, certificates, etcd data) after the tests.
pub const KEEP_ENV: &str = "COLDSITE_E2E_KEEP";

pub(crate) fn keep_dirs() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// What to run.
pub(crate) struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub envs: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// stdout and stderr go here.
    pub log: PathBuf,
}

type Request = (Spec, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Result<mpsc::Sender<Request>, String>> = OnceLock::new();

struct Registry {
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawner() -> Result<&'static mpsc::Sender<Request>> {
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("coldsite-e2e-spawner".into())
                .spawn(move || {
                    for (spec, reply) in rx {
                        let _ = reply.send(spawn_here(spec));
                    }
                    // The sender lives in a static, so the loop never ends; if it does,
                    // keep the thread (the children's parent) alive anyway.
                    loop {
                        std::thread::park();
                    }
                })
                .map_err(|e| format!("starting the spawner thread: {e}"))?;
            // SAFETY: registering a plain `extern "C" fn` with no captured state.
            if unsafe { libc::atexit(cleanup_at_exit) } != 0 {
                return Err("atexit registration failed".to_owned());
            }
            Ok(tx)
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn spawn_here(spec: Spec) -> io::Result<Child> {
    let log = File::create(&spec.log)?;
    let log_err = log.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    for (k, v) in &spec.envs {
        cmd.env(k, v);
    }
    // SAFETY: the closure only calls the async-signal-safe prctl(2) and getppid(2).
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `spec` from the spawner thread and registers its pid for cleanup at exit.
pub(crate) fn spawn(spec: Spec) -> Result<Child> {
    let what = spec.program.display().to_string();
    let (tx, rx) = mpsc::channel();
    spawner()?
        .send((spec, tx))
        .map_err(|_| anyhow!("the spawner thread is gone"))?;
    let child = rx
        .recv()
        .map_err(|_| anyhow!("the spawner thread dropped the request"))?
        .with_context(|| format!("spawning {what}"))?;
    registry().pids.push(child.id() as i32);
    Ok(child)
}

/// Starts `program` with `args`, its output to `log`, tied to this process as every child
/// here is: it dies with this process, even one killed with SIGKILL (the site simulator's
/// upstream controllers, whose tests kill it so).
pub fn spawn_tied(program: &Path, args: Vec<String>, log: &Path) -> Result<Child> {
    spawn(Spec {
        program: program.to_owned(),
        args: args.into_iter().map(OsString::from).collect(),
        envs: Vec::new(),
        cwd: log.parent().unwrap_or(Path::new("/")).to_owned(),
        log: log.to_owned(),
    })
}

/// Kills `child` (SIGKILL), reaps it and forgets it.
pub(crate) fn kill(child: &mut Child) {
    registry().pids.retain(|p| *p != child.id() as i32);
    let _ = child.kill();
    let _ = child.wait();
}

/// Creates a temporary directory that is removed at exit unless dropped earlier.
pub(crate) fn make_temp_dir(name: &str) -> Result<PathBuf> {
    remove_stale_dirs();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-{name}-", std::process::id()))
        .tempdir()
        .context("creating a temporary directory")?
        .keep();
    registry().dirs.push(dir.clone());
    Ok(dir)
}

/// Removes a directory made by [`make_temp_dir`] (kept when `COLDSITE_E2E_KEEP` is set).
pub(crate) fn remove_temp_dir(dir: &Path) {
    registry().dirs.retain(|d| d != dir);
    if keep_dirs() {
        eprintln!("coldsite-e2e: keeping {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Removes `coldsite-e2e-<pid>-*` directories whose process no longer exists.
fn remove_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

extern "C" fn cleanup_at_exit() {
    // Never panic or block forever in an atexit handler.
    let Ok(mut reg) = REGISTRY.try_lock().or_else(|e| match e {
        std::sync::TryLockError::Poisoned(p) => Ok(p.into_inner()),
        std::sync::TryLockError::WouldBlock => Err(()),
    }) else {
        return;
    };
    // Last started first: controller manager, then API server, then etcd.
    for pid in reg.pids.drain(..).rev() {
        // SAFETY: plain syscalls on a pid this process spawned and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    let keep = keep_dirs();
    for dir in reg.dirs.drain(..) {
        if keep {
            eprintln!("coldsite-e2e: keeping {}", dir.display());
        } else {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
