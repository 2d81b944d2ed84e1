//! Host settings the engines care about, the data dir, and the local shards' pidfiles.

use std::path::{Path, PathBuf};

use crate::{Check, CheckStatus};

/// The open-file limit below which a node warns: one engine's default `maxclients` (10000)
/// plus the 32 descriptors Redis keeps for itself.
const MIN_OPEN_FILES: u64 = 10_032;
/// The listen backlog rlcheck asks for.
const MIN_SOMAXCONN: u32 = 1024;
/// Free space below which the data dir fails the check (an AOF rewrite or RDB save needs room).
const MIN_FREE_BYTES: u64 = 256 << 20;
/// Free space below which the data dir is warned about.
const WARN_FREE_BYTES: u64 = 1 << 30;

/// What the machine says about the settings the checks judge; `None` where it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `vm.overcommit_memory`.
    pub overcommit_memory: Option<u8>,
    /// The selected value of `/sys/kernel/mm/transparent_hugepage/enabled` (`always`,
    /// `madvise`, `never`).
    pub transparent_hugepage: Option<String>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u32>,
    /// The daemon's soft open-file limit (its engines inherit it).
    pub open_files: Option<u64>,
    /// `net.ipv4.ip_local_port_range`: the ports the kernel picks for outgoing connections.
    pub ip_local_port_range: Option<(u16, u16)>,
}

impl HostFacts {
    /// Reads the facts of this machine.
    pub fn read() -> HostFacts {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        HostFacts {
            overcommit_memory: read("/proc/sys/vm/overcommit_memory")
                .and_then(|t| t.trim().parse().ok()),
            transparent_hugepage: read("/sys/kernel/mm/transparent_hugepage/enabled")
                .and_then(|t| selected(&t)),
            somaxconn: read("/proc/sys/net/core/somaxconn").and_then(|t| t.trim().parse().ok()),
            open_files: open_file_limit(),
            ip_local_port_range: read("/proc/sys/net/ipv4/ip_local_port_range")
                .and_then(|t| port_pair(&t)),
        }
    }
}

/// The bracketed choice of a sysfs multiple-choice file (`always [madvise] never`).
fn selected(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

fn port_pair(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(|p| p.parse().ok());
    Some((parts.next()??, parts.next()??))
}

fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

/// `verify_host_settings`: the settings engines warn about at start, one check each.
pub fn host_settings(facts: &HostFacts) -> Vec<Check> {
    vec![
        overcommit(facts.overcommit_memory),
        hugepages(facts.transparent_hugepage.as_deref()),
        somaxconn(facts.somaxconn),
        open_files(facts.open_files),
    ]
}

fn overcommit(value: Option<u8>) -> Check {
    const NAME: &str = "verify_overcommit_memory";
    match value {
        Some(1) => Check::pass(NAME, "vm.overcommit_memory = 1"),
        Some(v) => Check::issue(
            NAME,
            CheckStatus::Warn,
            format!("vm.overcommit_memory = {v}: a background save or a full sync of a large shard may fail to fork"),
            "sysctl -w vm.overcommit_memory=1, and add 'vm.overcommit_memory = 1' to /etc/sysctl.conf",
        ),
        None => unreadable(NAME, "/proc/sys/vm/overcommit_memory"),
    }
}

fn hugepages(value: Option<&str>) -> Check {
    const NAME: &str = "verify_transparent_hugepage";
    match value {
        Some("always") => Check::issue(
            NAME,
            CheckStatus::Warn,
            "transparent huge pages are 'always': engines see latency spikes and memory bloat after fork",
            "echo never > /sys/kernel/mm/transparent_hugepage/enabled (and make it permanent in the boot settings)",
        ),
        Some(v) => Check::pass(NAME, format!("transparent huge pages: {v}")),
        None => unreadable(NAME, "/sys/kernel/mm/transparent_hugepage/enabled"),
    }
}

fn somaxconn(value: Option<u32>) -> Check {
    const NAME: &str = "verify_somaxconn";
    match value {
        Some(v) if v >= MIN_SOMAXCONN => Check::pass(NAME, format!("net.core.somaxconn = {v}")),
        Some(v) => Check::issue(
            NAME,
            CheckStatus::Warn,
            format!("net.core.somaxconn = {v}, below {MIN_SOMAXCONN}: bursts of new client connections may be refused"),
            format!("sysctl -w net.core.somaxconn={MIN_SOMAXCONN}"),
        ),
        None => unreadable(NAME, "/proc/sys/net/core/somaxconn"),
    }
}

fn open_files(value: Option<u64>) -> Check {
    const NAME: &str = "verify_open_files";
    match value {
        Some(v) if v >= MIN_OPEN_FILES => Check::pass(NAME, format!("open-file limit {v}")),
        Some(v) => Check::issue(
            NAME,
            CheckStatus::Warn,
            format!("open-file limit {v}, below {MIN_OPEN_FILES}: engines lower maxclients and the endpoints refuse clients sooner"),
            format!("raise the daemon's limit (ulimit -n {MIN_OPEN_FILES}, or LimitNOFILE= in its service unit) and restart it"),
        ),
        None => unreadable(NAME, "getrlimit(RLIMIT_NOFILE)"),
    }
}

fn unreadable(name: &str, what: &str) -> Check {
    Check::issue(
        name,
        CheckStatus::Warn,
        format!("could not read {what}"),
        format!("check that {what} is readable by the daemon's user"),
    )
}

/// `verify_port_range`: the kernel's range for outgoing ports must not overlap the ports
/// Flotilla assigns (`ranges`: first, last and what they are for), or an outgoing connection
/// may take a port a new shard or endpoint needs.
pub fn port_range(facts: &HostFacts, ranges: &[(u16, u16, &str)]) -> Check {
    const NAME: &str = "verify_port_range";
    let Some((low, high)) = facts.ip_local_port_range else {
        return unreadable(NAME, "/proc/sys/net/ipv4/ip_local_port_range");
    };
    let clashes: Vec<String> = ranges
        .iter()
        .filter(|(first, last, _)| low <= *last && *first <= high)
        .map(|(first, last, what)| format!("{what} {first}-{last}"))
        .collect();
    if clashes.is_empty() {
        return Check::pass(
            NAME,
            format!("ip_local_port_range {low}-{high} is clear of Flotilla's ports"),
        );
    }
    let above = ranges
        .iter()
        .map(|(_, last, _)| *last)
        .max()
        .unwrap_or(high);
    Check::issue(
        NAME,
        CheckStatus::Warn,
        format!(
            "ip_local_port_range {low}-{high} overlaps {}",
            clashes.join(", ")
        ),
        format!(
            "sysctl -w net.ipv4.ip_local_port_range='{} 65535' (and in /etc/sysctl.conf)",
            above.saturating_add(1)
        ),
    )
}

/// `verify_data_dir`: the data dir takes a new file, and has room for snapshots and the store.
pub fn data_dir(dir: &Path) -> Vec<Check> {
    const WRITABLE: &str = "verify_data_dir_writable";
    let probe = dir.join(format!(".check-{}", std::process::id()));
    let writable = std::fs::write(&probe, b"check").and_then(|_| std::fs::remove_file(&probe));
    let writable = match writable {
        Ok(()) => Check::pass(WRITABLE, format!("{} is writable", dir.display())),
        Err(e) => Check::issue(
            WRITABLE,
            CheckStatus::Fail,
            format!("cannot write in {}: {e}", dir.display()),
            "give the daemon's user write access to its data dir",
        ),
    };
    vec![
        writable,
        free_space(dir, flotilla_engine::available_bytes(dir)),
    ]
}

fn free_space(dir: &Path, available: Option<u64>) -> Check {
    const NAME: &str = "verify_free_space";
    let mib = |b: u64| b >> 20;
    match available {
        Some(free) if free >= WARN_FREE_BYTES => {
            Check::pass(NAME, format!("{} MiB free in {}", mib(free), dir.display()))
        }
        Some(free) => Check::issue(
            NAME,
            if free < MIN_FREE_BYTES {
                CheckStatus::Fail
            } else {
                CheckStatus::Warn
            },
            format!(
                "only {} MiB free in {}: snapshots, AOF rewrites and the store need room",
                mib(free),
                dir.display()
            ),
            "free space on that filesystem or move the data dir to a larger one",
        ),
        None => unreadable(NAME, &format!("statvfs({})", dir.display())),
    }
}

/// `verify_pidfiles`: every shard the store places on this node (`shards`: uid and folder) has
/// a pidfile naming a live engine.
pub fn shard_pidfiles(shards: &[(u64, PathBuf)]) -> Check {
    const NAME: &str = "verify_pidfiles";
    let mut missing = Vec::new();
    for (uid, dir) in shards {
        let pidfile = dir.join("engine.pid");
        match flotilla_engine::read_pidfile(&pidfile) {
            Ok(Some(pid)) if flotilla_engine::pid_running(pid) => {}
            Ok(Some(pid)) => missing.push(format!("shard {uid} (pid {pid} is gone)")),
            Ok(None) => missing.push(format!("shard {uid} (no pidfile)")),
            Err(e) => missing.push(format!("shard {uid} ({e})")),
        }
    }
    if missing.is_empty() {
        return Check::pass(
            NAME,
            format!("{} local shard(s), each with a live engine", shards.len()),
        );
    }
    Check::issue(
        NAME,
        CheckStatus::Fail,
        format!("no running engine for {}", missing.join(", ")),
        "the node's agent restarts a dead shard within seconds; if this persists, read the shard's engine.log in DATA_DIR/shards/UID/",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_choices_and_port_ranges_parse() {
        assert_eq!(
            selected("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(selected("always madvise never"), None);
        assert_eq!(port_pair("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(port_pair("x"), None);
    }

    #[test]
    fn host_settings_warn_with_the_fix_and_pass_when_right() {
        let good = HostFacts {
            overcommit_memory: Some(1),
            transparent_hugepage: Some("never".into()),
            somaxconn: Some(4096),
            open_files: Some(65536),
            ip_local_port_range: Some((32768, 60999)),
        };
        assert!(host_settings(&good)
            .iter()
            .all(|c| c.status == CheckStatus::Pass));
        let bad = HostFacts {
            overcommit_memory: Some(0),
            transparent_hugepage: Some("always".into()),
            somaxconn: Some(128),
            open_files: Some(1024),
            ip_local_port_range: Some((32768, 60999)),
        };
        let checks = host_settings(&bad);
        assert!(checks.iter().all(|c| c.status == CheckStatus::Warn));
        assert!(checks[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("vm.overcommit_memory=1"));
        assert!(checks[1].fix.as_deref().unwrap().contains("never"));
    }

    #[test]
    fn a_port_range_overlapping_shard_ports_is_named() {
        let ranges = [(10000, 19999, "endpoints"), (20000, 29999, "shards")];
        let clear = HostFacts {
            ip_local_port_range: Some((32768, 60999)),
            ..HostFacts::default()
        };
        assert_eq!(port_range(&clear, &ranges).status, CheckStatus::Pass);
        let clash = HostFacts {
            ip_local_port_range: Some((15000, 60999)),
            ..HostFacts::default()
        };
        let check = port_range(&clash, &ranges);
        assert_eq!(check.status, CheckStatus::Warn);
        assert!(
            check
                .detail
                .contains("endpoints 10000-19999, shards 20000-29999"),
            "{}",
            check.detail
        );
        assert!(check.fix.unwrap().contains("'30000 65535'"));
    }

    #[test]
    fn the_data_dir_check_writes_and_measures() {
        let dir = tempfile::tempdir().unwrap();
        let checks = data_dir(dir.path());
        assert_eq!(checks[0].status, CheckStatus::Pass, "{:?}", checks[0]);
        assert_eq!(checks[1].name, "verify_free_space");
        let low = free_space(dir.path(), Some(10 << 20));
        assert_eq!(low.status, CheckStatus::Fail);
        let missing = data_dir(&dir.path().join("nope"));
        assert_eq!(missing[0].status, CheckStatus::Fail);
    }

    #[test]
    fn a_shard_without_a_live_engine_fails_the_pidfile_check() {
        let dir = tempfile::tempdir().unwrap();
        let alive = dir.path().join("1");
        std::fs::create_dir(&alive).unwrap();
        std::fs::write(alive.join("engine.pid"), std::process::id().to_string()).unwrap();
        let absent = dir.path().join("2");
        std::fs::create_dir(&absent).unwrap();
        assert_eq!(
            shard_pidfiles(&[(1, alive.clone())]).status,
            CheckStatus::Pass
        );
        let check = shard_pidfiles(&[(1, alive), (2, absent)]);
        assert_eq!(check.status, CheckStatus::Fail);
        assert!(
            check.detail.contains("shard 2 (no pidfile)"),
            "{}",
            check.detail
        );
    }
}
