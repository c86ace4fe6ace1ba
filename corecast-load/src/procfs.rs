//! Readings from `/proc`: a process's RSS and CPU time, and the busy time of CPU cores.
//!
//! Runs on: the load tool's main thread, between phases.

/// VmRSS of a process in bytes.
pub(crate) fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy time of the given CPUs, in clock ticks: user + nice + system + irq + softirq from
/// `/proc/stat` (idle, iowait and steal left out). `None` when no CPU is given.
pub(crate) fn cores_busy_ticks(cpus: &[usize]) -> Option<u64> {
    if cpus.is_empty() {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut total = 0;
    for cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        total += core_busy_of(line)?;
    }
    Some(total)
}

/// user + nice + system + irq + softirq of one `cpuN` line of `/proc/stat`.
pub(crate) fn core_busy_of(line: &str) -> Option<u64> {
    let f: Vec<u64> = line.split_whitespace().skip(1).map_while(|x| x.parse().ok()).collect();
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

/// Linux reports /proc CPU times in USER_HZ, which is 100 on every mainstream build.
pub(crate) fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_busy_sums_user_nice_system_irq_softirq() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        assert_eq!(core_busy_of("cpu0 10 1 20 500 7 3 4 9 0 0"), Some(38));
        assert_eq!(core_busy_of("cpu0 10"), None);
    }
}
