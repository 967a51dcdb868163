//! CPU time and memory of a process, from Linux's `/proc`: how the bench tells apart what
//! the controller, the simulator and each API server cost.

use anyhow::{Context, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// User plus system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident memory now, in MiB.
    pub rss_mib: f64,
    /// The most resident memory so far (VmHWM), in MiB.
    pub peak_rss_mib: f64,
}

pub fn read(pid: u32) -> Result<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    Ok(Reading {
        cpu_seconds: cpu_seconds(&stat).context("/proc/PID/stat")?,
        rss_mib: kib(&status, "VmRSS:").unwrap_or_default() / 1024.0,
        peak_rss_mib: kib(&status, "VmHWM:").unwrap_or_default() / 1024.0,
    })
}

/// utime + stime of a `/proc/PID/stat` line; the command may hold spaces, so fields are
/// counted after its closing parenthesis.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after the command.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

fn kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let r = read(std::process::id()).unwrap();
        assert!(
            r.cpu_seconds > 0.0 && r.rss_mib > 1.0 && r.peak_rss_mib >= r.rss_mib,
            "{r:?}"
        );
    }

    #[test]
    fn a_command_with_spaces_and_parentheses_is_skipped() {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = "42 (a (b) c) S 1 1 1 0 -1 4194560 10 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_seconds(line), Some(300.0 / hz));
    }
}
