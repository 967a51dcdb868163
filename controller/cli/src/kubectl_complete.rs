//! `kubectl_complete-coldsite`: the helper kubectl (1.26 and later) runs to complete
//! `kubectl coldsite …` on the command line. It hands the words to
//! `kubectl-coldsite __complete`, installed beside it.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("kubectl-coldsite")))
        .filter(|p| p.is_file());
    let program = beside.map_or_else(|| "kubectl-coldsite".into(), |p| p.into_os_string());
    let error = Command::new(&program)
        .arg("__complete")
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!(
        "kubectl_complete-coldsite: running {}: {error}",
        program.to_string_lossy()
    );
    ExitCode::FAILURE
}
