//! Facts about the machine the node runs on.

/// The OS name from `/etc/os-release` (`PRETTY_NAME`), or `unknown` when it cannot be read.
pub fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| pretty_name(&text))
        .unwrap_or_else(|| "unknown".to_string())
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`), when it can be read: the
/// room placement may fill on this node.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_total(&text)
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

fn pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|value| value.trim().trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pretty_name_is_read_without_quotes() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            super::pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(super::pretty_name("NAME=x\n"), None);
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       16318496 kB\nMemFree:         1000 kB\n";
        assert_eq!(super::mem_total(text), Some(16318496 * 1024));
        assert_eq!(super::mem_total("MemFree: 1 kB\n"), None);
    }
}
