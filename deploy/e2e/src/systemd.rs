//! The systemd units of `deploy/systemd/` read as their tests need them: settings by
//! key, the command line, the capability set, and the install paths mapped into a
//! test's own directories.

use std::path::{Path, PathBuf};

/// The directory of the units and the configuration files they read.
#[must_use]
pub fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// A unit file: its `Key=value` settings in order (sections are not kept: no key the
/// tests read appears in two sections).
#[derive(Debug, Clone)]
pub struct Unit {
    /// The unit's name (`xlaned.service`).
    pub name: String,
    settings: Vec<(String, String)>,
}

impl Unit {
    /// Read `deploy/systemd/<name>`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read(name: &str) -> std::io::Result<Self> {
        Ok(Self::parse(name, &std::fs::read_to_string(units_dir().join(name))?))
    }

    /// Parse a unit file's text (comments, blank lines and section headers skipped; our
    /// units continue no line with a backslash).
    #[must_use]
    pub fn parse(name: &str, text: &str) -> Self {
        let settings = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Self { name: name.into(), settings }
    }

    /// Every value of `key`, in order.
    #[must_use]
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// The single value of `key`.
    ///
    /// # Panics
    /// If `key` is missing or set more than once.
    #[must_use]
    pub fn value(&self, key: &str) -> &str {
        match self.values(key)[..] {
            [v] => v,
            ref vs => panic!("{}: expected one {key}=, found {vs:?}", self.name),
        }
    }

    /// `ExecStart=` split into words (our units quote nothing and use no specifiers).
    ///
    /// # Panics
    /// If it quotes, uses a `%` specifier, a `$` variable or an executable prefix
    /// (`-`, `@`, `+`, …), which this split would get wrong.
    #[must_use]
    pub fn exec_start(&self) -> Vec<String> {
        let line = self.value("ExecStart");
        assert!(!line.contains(['"', '\'', '%', '$', '\\']), "{}: ExecStart needs a real parser: {line}", self.name);
        assert!(line.starts_with('/'), "{}: ExecStart has a prefix: {line}", self.name);
        line.split_whitespace().map(str::to_owned).collect()
    }

    /// `CapabilityBoundingSet=`'s capabilities, lower case without `CAP_` (setpriv's
    /// names); empty for none.
    #[must_use]
    pub fn capabilities(&self, key: &str) -> Vec<String> {
        let value = self.value(key);
        assert!(!value.starts_with('~'), "{}: {key} as an inverted list is not handled", self.name);
        value.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_lowercase()).collect()
    }
}

/// Where a test puts what the units name under `/usr/local/bin`, `/etc/xlane`,
/// `/run/xlane` and `/var/lib/xlane`: the built binaries and directories of its own.
#[derive(Debug, Clone)]
pub struct PathMap {
    /// (install path prefix, the test's path), longest prefix first.
    prefixes: Vec<(String, String)>,
}

impl PathMap {
    /// Map the install paths: binaries to `bin_dir`, and `/etc/xlane`, `/run/xlane`,
    /// `/var/lib/xlane` to the same paths under `root`, except `extra` (e.g. the file
    /// datastore, to a directory shared with other lab nodes).
    #[must_use]
    pub fn new(bin_dir: &Path, root: &Path, extra: &[(&str, &Path)]) -> Self {
        let mut prefixes: Vec<(String, String)> =
            extra.iter().map(|(from, to)| ((*from).to_owned(), to.to_string_lossy().into_owned())).collect();
        prefixes.push(("/usr/local/bin".into(), bin_dir.to_string_lossy().into_owned()));
        for dir in ["/etc/xlane", "/run/xlane", "/var/lib/xlane"] {
            prefixes.push((dir.into(), root.join(&dir[1..]).to_string_lossy().into_owned()));
        }
        prefixes.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Self { prefixes }
    }

    /// `text` with every mapped install path replaced.
    #[must_use]
    pub fn apply(&self, text: &str) -> String {
        // Replace through placeholders, so a replacement is never rewritten again by a
        // shorter prefix.
        let mut out = text.to_owned();
        for (i, (from, _)) in self.prefixes.iter().enumerate() {
            out = out.replace(from.as_str(), &format!("\u{0}{i}\u{0}"));
        }
        for (i, (_, to)) in self.prefixes.iter().enumerate() {
            out = out.replace(&format!("\u{0}{i}\u{0}"), to);
        }
        out
    }

    /// The test's path for install path `path`.
    #[must_use]
    pub fn path(&self, path: &str) -> PathBuf {
        self.apply(path).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_parses_into_settings_and_its_command_line() {
        let unit = Unit::parse(
            "x.service",
            "# c\n[Service]\nType=exec\nExecStart=/usr/local/bin/x --config /etc/xlane/x.toml\n\
             CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF\nAmbientCapabilities=\n",
        );
        assert_eq!(unit.value("Type"), "exec");
        assert_eq!(unit.exec_start(), ["/usr/local/bin/x", "--config", "/etc/xlane/x.toml"]);
        assert_eq!(unit.capabilities("CapabilityBoundingSet"), ["net_admin", "bpf"]);
        assert_eq!(unit.capabilities("AmbientCapabilities"), Vec::<String>::new());
    }

    #[test]
    fn install_paths_map_longest_prefix_first_and_once() {
        let map = PathMap::new(Path::new("/t/bin"), Path::new("/t/root"), &[("/var/lib/xlane/store", Path::new("/s"))]);
        let text = "/usr/local/bin/xlaned /run/xlane/a.sock /var/lib/xlane/store /var/lib/xlane/node";
        assert_eq!(map.apply(text), "/t/bin/xlaned /t/root/run/xlane/a.sock /s /t/root/var/lib/xlane/node");
        // A mapped path under another install prefix is not mapped twice.
        let nested = PathMap::new(Path::new("/run/xlane/bin"), Path::new("/r"), &[]);
        assert_eq!(nested.apply("/usr/local/bin/x"), "/run/xlane/bin/x");
    }
}
