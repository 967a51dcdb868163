//! Checks a test could not make on this machine, reported where a person sees them.
//!
//! A passing test's output is captured, so a skip printed there is hidden. `./test.sh`
//! sets [`SKIPS_FILE_ENV`] to a file and prints what the tests wrote into it at the end of
//! the run; without it (a plain `cargo test`) a skip goes to stderr only.

use std::io::Write;

/// The file `./test.sh` collects skips in.
pub const SKIPS_FILE_ENV: &str = "COLDSITE_SKIPS_FILE";

/// Records that `what` was not checked, and `how` to make it run.
pub fn record(what: &str, how: &str) {
    let line = format!("{what}: {how}");
    eprintln!("SKIPPED: {line}");
    let Some(path) = std::env::var_os(SKIPS_FILE_ENV) else {
        return;
    };
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
    if let Ok(mut file) = file {
        let _ = writeln!(file, "{line}");
    }
}
