//! What the agent measures between two reports, from the kernel's own counters: TCP
//! retransmits (`/proc/net/snmp`), block I/O latency (`/proc/diskstats`), softirq time
//! (`/proc/stat`). The kernel keeps cumulative counters; the agent keeps the last reading in
//! its state and reports the rates over the interval, each oriented so that higher is worse,
//! as rollout gates compare them.

use std::collections::BTreeMap;
use std::path::Path;

/// Cumulative counters read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// TCP segments sent.
    pub tcp_out_segs: u64,
    /// TCP segments retransmitted.
    pub tcp_retrans_segs: u64,
    /// Block I/Os completed (reads and writes) on whole disks.
    pub disk_ios: u64,
    /// Milliseconds spent on them.
    pub disk_ms: u64,
    /// CPU time in all states, in clock ticks.
    pub cpu_total: u64,
    /// CPU time in softirqs, in clock ticks.
    pub cpu_softirq: u64,
}

/// Reads the counters from `proc` (normally `/proc`) and `sys` (`/sys`); a file that cannot
/// be read leaves its counters at zero (a container without block devices, say), so the
/// rates it feeds are simply absent.
pub fn read(proc: &Path, sys: &Path) -> Counters {
    let text = |p: &str| std::fs::read_to_string(proc.join(p)).unwrap_or_default();
    let (tcp_out_segs, tcp_retrans_segs) = tcp_segments(&text("net/snmp"));
    let whole_disk = |name: &str| {
        !name.starts_with("loop")
            && !name.starts_with("ram")
            && !name.starts_with("zram")
            && sys.join("block").join(name).exists()
    };
    let (disk_ios, disk_ms) = disk_io(&text("diskstats"), whole_disk);
    let (cpu_total, cpu_softirq) = cpu_time(&text("stat"));
    Counters {
        tcp_out_segs,
        tcp_retrans_segs,
        disk_ios,
        disk_ms,
        cpu_total,
        cpu_softirq,
    }
}

/// The rates between two readings, by metric name; a rate with no activity under it (no
/// segment sent, no I/O done) is left out rather than reported as a zero it did not measure.
pub fn rates(before: &Counters, after: &Counters) -> BTreeMap<String, f64> {
    let delta = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let mut out = BTreeMap::new();
    let sent = delta(before.tcp_out_segs, after.tcp_out_segs);
    if sent > 0.0 {
        let retrans = delta(before.tcp_retrans_segs, after.tcp_retrans_segs);
        out.insert("tcp_retransmits".to_string(), 1000.0 * retrans / sent);
    }
    let ios = delta(before.disk_ios, after.disk_ios);
    if ios > 0.0 {
        out.insert(
            "io_latency_ms".to_string(),
            delta(before.disk_ms, after.disk_ms) / ios,
        );
    }
    let cpu = delta(before.cpu_total, after.cpu_total);
    if cpu > 0.0 {
        out.insert(
            "softirq_pct".to_string(),
            100.0 * delta(before.cpu_softirq, after.cpu_softirq) / cpu,
        );
    }
    out
}

/// `OutSegs` and `RetransSegs` of the `Tcp:` lines (a header line of names, then values).
fn tcp_segments(snmp: &str) -> (u64, u64) {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let field = |want: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == want)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("OutSegs"), field("RetransSegs"))
}

/// Completed reads and writes, and the milliseconds spent on them, over the devices
/// `whole_disk` accepts (partitions would count each I/O twice).
fn disk_io(diskstats: &str, whole_disk: impl Fn(&str) -> bool) -> (u64, u64) {
    let mut ios = 0u64;
    let mut ms = 0u64;
    for line in diskstats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // major minor name reads merged sectors ms_reading writes merged sectors ms_writing ...
        if f.len() < 11 || !whole_disk(f[2]) {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        ios = ios.saturating_add(n(3)).saturating_add(n(7));
        ms = ms.saturating_add(n(6)).saturating_add(n(10));
    }
    (ios, ms)
}

/// All CPU time, and softirq time, from the `cpu ` line (user nice system idle iowait irq
/// softirq steal guest guest_nice; guest time is already in user time).
fn cpu_time(stat: &str) -> (u64, u64) {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().take(8).sum();
    (total, v.get(6).copied().unwrap_or(0))
}

/// Whether the kernel kept a crash record from before this boot (pstore), a sign that the
/// last boot did not end cleanly.
pub fn pstore_has_records(sys: &Path) -> bool {
    std::fs::read_dir(sys.join("fs/pstore"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
Tcp: 1 200 120000 -1 23 7 2 4 0 3539 1864 12 0 8 0\n\
Udp: InDatagrams NoPorts\nUdp: 1 2\n";

    const DISKSTATS: &str = "   7       0 loop0 5 0 10 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
 254       0 vda 1000 10 8000 400 500 20 4000 600 0 900 1000 0 0 0 0 0 0\n\
 254       1 vda1 990 10 7900 395 499 20 3990 599 0 890 990 0 0 0 0 0 0\n";

    const STAT: &str =
        "cpu  177830 0 15910 16627 818 0 115 1427 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n";

    #[test]
    fn counters_come_from_the_kernels_own_files() {
        assert_eq!(tcp_segments(SNMP), (1864, 12));
        assert_eq!(disk_io(DISKSTATS, |n| n == "vda"), (1500, 1000));
        assert_eq!(
            cpu_time(STAT),
            (177830 + 15910 + 16627 + 818 + 115 + 1427, 115)
        );
        assert_eq!(tcp_segments("garbage"), (0, 0));
        assert_eq!(cpu_time(""), (0, 0));
    }

    #[test]
    fn rates_are_per_interval_and_absent_without_activity() {
        let before = Counters {
            tcp_out_segs: 1000,
            tcp_retrans_segs: 2,
            disk_ios: 100,
            disk_ms: 500,
            cpu_total: 10_000,
            cpu_softirq: 100,
        };
        let after = Counters {
            tcp_out_segs: 3000,
            tcp_retrans_segs: 6,
            disk_ios: 100,
            disk_ms: 500,
            cpu_total: 12_000,
            cpu_softirq: 160,
        };
        let r = rates(&before, &after);
        assert_eq!(r["tcp_retransmits"], 2.0);
        assert_eq!(r["softirq_pct"], 3.0);
        assert!(
            !r.contains_key("io_latency_ms"),
            "no I/O, no latency: {r:?}"
        );
        // Counters that went backwards (a reboot in between) give no negative rate.
        assert!(rates(&after, &before).is_empty());
    }

    #[test]
    fn this_machines_kernel_gives_cpu_counters() {
        // The real /proc of the machine running the tests: the parser reads what the kernel
        // writes, not only what the fixture above says it writes.
        let c = read(Path::new("/proc"), Path::new("/sys"));
        assert!(c.cpu_total > 0, "{c:?}");
        assert!(c.cpu_softirq <= c.cpu_total);
    }
}
