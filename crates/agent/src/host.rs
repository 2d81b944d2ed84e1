//! Facts about the machine the node runs on.

use std::path::Path;

/// The machine's own OS description.
pub const OS_RELEASE: &str = "/etc/os-release";

/// The OS name from `/etc/os-release` (`PRETTY_NAME`), or `unknown` when it cannot be read.
pub fn os_name() -> String {
    OsRelease::read(Path::new(OS_RELEASE)).pretty_name
}

/// What an `os-release` file says of the operating system: what a node reports and an OS
/// upgrade checks against its package's `supported_os`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. `debian`.
    pub id: String,
    /// `VERSION_ID`, e.g. `12`.
    pub version_id: String,
    /// `PRETTY_NAME`, e.g. `Debian GNU/Linux 12 (bookworm)`; `unknown` when absent.
    pub pretty_name: String,
}

impl OsRelease {
    /// The file at `path`, read; a missing or unreadable file gives an unknown OS.
    pub fn read(path: &Path) -> OsRelease {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        OsRelease::parse(&text)
    }

    /// An `os-release` text, parsed.
    pub fn parse(text: &str) -> OsRelease {
        OsRelease {
            id: field(text, "ID").unwrap_or_default(),
            version_id: field(text, "VERSION_ID").unwrap_or_default(),
            pretty_name: pretty_name(text).unwrap_or_else(|| "unknown".to_string()),
        }
    }

    /// `ID-VERSION_ID` (`debian-12`), the name packages list in `supported_os`; empty when the
    /// file named neither.
    pub fn os_id(&self) -> String {
        match (self.id.is_empty(), self.version_id.is_empty()) {
            (true, _) => String::new(),
            (false, true) => self.id.clone(),
            (false, false) => format!("{}-{}", self.id, self.version_id),
        }
    }
}

/// The value of `key=` in an os-release text, without quotes.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
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
    field(os_release, "PRETTY_NAME")
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_release_gives_the_id_packages_list() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nID=debian\n";
        let os = super::OsRelease::parse(text);
        assert_eq!(os.os_id(), "debian-13");
        assert_eq!(os.pretty_name, "Debian GNU/Linux 13 (trixie)");
        let ubuntu = super::OsRelease::parse("ID=ubuntu\nVERSION_ID=\"22.04\"\n");
        assert_eq!(ubuntu.os_id(), "ubuntu-22.04");
        assert_eq!(super::OsRelease::parse("").os_id(), "");
    }

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
