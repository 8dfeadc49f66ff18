//! One layering of settings for xlane's binaries (xlaned, xlane-agent): command-line
//! flags, each with an environment fallback (clap), over a TOML file named by `--config`,
//! over defaults.
//!
//! The settings struct is the clap one, also deriving `Serialize` and `Deserialize` with
//! `#[serde(deny_unknown_fields, rename_all = "kebab-case")]`: the file's keys are the
//! flag names, a misspelt key is an error, and no second struct mirrors the flags. The
//! `--config` field itself is `#[serde(skip)]`. [`layer`] fills every setting the user
//! did not give from the file.
//!
//! [`init_logging`] is the binaries' one logging set-up.
#![forbid(unsafe_code)]

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Log to stderr at `RUST_LOG`'s levels (default `info`), with ANSI colour only when
/// stderr is a terminal and `NO_COLOR` is unset or empty: a log file or journal gets
/// plain lines.
pub fn init_logging() {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(true)
        .init();
}

/// Settings that a config file can fill.
pub trait Layered: Serialize + DeserializeOwned {
    /// The file `--config` (or its environment variable) names, if any.
    fn config_file(&self) -> Option<&Path>;
}

/// Why the settings could not be layered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is unreadable, not TOML, or has unknown keys or wrong values. The cause
    /// is in the message: it ends the program's start and is printed once.
    #[error("config {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The flags' values do not fit TOML (a settings type this crate cannot carry).
    #[error("settings cannot be layered: {0}")]
    Flags(String),
}

/// `flags` with every setting the user did not give filled from its config file, if it
/// names one. A setting counts as given when it is set at all (a `None` field is not) and,
/// with `matches`, when it came from the command line or the environment: so a clap
/// `default_value` still shows in `--help` and still yields to the file.
///
/// # Errors
/// [`Error::File`] for an unreadable or invalid file.
pub fn layer<T: Layered>(flags: T, matches: Option<&ArgMatches>) -> Result<T, Error> {
    let Some(path) = flags.config_file().map(Path::to_path_buf) else { return Ok(flags) };
    let bad = |message: String| Error::File { path: path.clone(), message };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let file: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let toml::Value::Table(mut merged) = toml::Value::try_from(&flags).map_err(|e| Error::Flags(e.to_string()))? else {
        return Err(Error::Flags("not a struct".to_owned()));
    };
    for (key, value) in file {
        let given = merged.contains_key(&key) && matches.is_none_or(|m| from_user(m, &key));
        if !given {
            merged.insert(key, value);
        }
    }
    toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| bad(e.to_string()))
}

/// Whether the command line or the environment set the flag of file key `key`.
fn from_user(m: &ArgMatches, key: &str) -> bool {
    let id = key.replace('-', "_");
    m.try_contains_id(&id).is_ok()
        && matches!(m.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use serde::Deserialize;

    #[derive(Debug, Default, Parser, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Flags {
        #[arg(long)]
        #[serde(skip)]
        config: Option<PathBuf>,
        /// No clap default: unset is `None`.
        #[arg(long)]
        workers: Option<usize>,
        /// A clap default.
        #[arg(long, default_value = "/run/x.sock")]
        socket_path: PathBuf,
        #[arg(long, value_delimiter = ',')]
        cores: Option<Vec<usize>>,
    }

    impl Layered for Flags {
        fn config_file(&self) -> Option<&Path> {
            self.config.as_deref()
        }
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("xlane-config-{name}-{}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let p = file("layers", "workers = 4\nsocket-path = \"/srv/s.sock\"\ncores = [1, 2]\n");
        let cfg = p.to_str().unwrap();
        let m = Flags::command().get_matches_from(["x", "--config", cfg, "--workers", "2"]);
        let f = layer(Flags::from_arg_matches(&m).unwrap(), Some(&m)).unwrap();
        assert_eq!((f.workers, f.socket_path.to_str(), f.cores), (Some(2), Some("/srv/s.sock"), Some(vec![1, 2])));
        let m = Flags::command().get_matches_from(["x", "--config", cfg, "--socket-path", "/a"]);
        let f = layer(Flags::from_arg_matches(&m).unwrap(), Some(&m)).unwrap();
        assert_eq!((f.workers, f.socket_path.to_str()), (Some(4), Some("/a")));
        // Without matches, only `None` fields are unset.
        let f = layer(Flags { config: Some(p.clone()), workers: None, ..Flags::default() }, None).unwrap();
        assert_eq!(f.workers, Some(4));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_files_are_named_and_explained() {
        for (name, text, what) in [
            ("unknown", "wrkers = 1\n", "unknown field"),
            ("config", "config = \"/x\"\n", "unknown field"),
            ("type", "workers = \"many\"\n", "workers"),
            ("syntax", "workers = \n", "config"),
        ] {
            let p = file(name, text);
            let e = layer(Flags { config: Some(p.clone()), ..Flags::default() }, None).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(p.to_str().unwrap()), "{name}: {e}");
            std::fs::remove_file(p).unwrap();
        }
        let e = layer(Flags { config: Some("/nonexistent/x.toml".into()), ..Flags::default() }, None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.toml"), "{e}");
    }
}
