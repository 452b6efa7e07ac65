//! A watched process's CPU time and memory, from `/proc`: utime + stime of
//! `/proc/PID/stat` (clock ticks, all threads) and VmRSS of `/proc/PID/status`.

use std::fs;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// stime alone (time in the kernel on the process's behalf), in clock ticks.
    pub sys_ticks: u64,
    pub rss_kib: u64,
    pub threads: u64,
}

pub fn sample(pid: u32) -> Result<Sample, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name (field 2) may contain spaces and parentheses: fields are counted
    // from after its closing parenthesis, where field 3 (state) starts.
    let rest = stat
        .rfind(')')
        .and_then(|at| stat.get(at + 1..))
        .ok_or("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field N (1-based, as in proc(5)) is fields[N - 3].
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no field {n} in /proc/{pid}/stat"))
    };
    let sys_ticks = field(15)?;
    let cpu_ticks = field(14)? + sys_ticks;
    let threads = field(20)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(Sample {
        cpu_ticks,
        sys_ticks,
        rss_kib,
        threads,
    })
}

/// Busy and total clock ticks of the whole machine (first line of `/proc/stat`): busy is
/// everything but idle and iowait.
pub fn machine() -> Result<(u64, u64), String> {
    let stat =
        fs::read_to_string("/proc/stat").map_err(|e| format!("cannot read /proc/stat: {e}"))?;
    let line = stat.lines().next().ok_or("empty /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}
