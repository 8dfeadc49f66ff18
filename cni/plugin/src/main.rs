//! `xlane`: the CNI plugin binary. Reads the environment and the network configuration,
//! writes a result or the spec's error JSON to stdout, and exits non-zero on error.
#![forbid(unsafe_code)]

use std::io::Read;
use xlane_cni::attach;
use xlane_cni::protocol::{self, CniError, Code, Command, Env, NetConf};

fn main() {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    // The version to answer in: the requested one when readable.
    let requested: Option<String> = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned));
    let answer_version =
        requested.clone().filter(|v| protocol::SUPPORTED.contains(&v.as_str())).unwrap_or_else(|| "1.1.0".to_owned());
    match run(&stdin, requested.as_deref(), &answer_version) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", e.to_json(&answer_version));
            std::process::exit(1);
        }
    }
}

fn run(stdin: &[u8], requested: Option<&str>, version: &str) -> Result<Option<serde_json::Value>, CniError> {
    let env = Env::from_vars(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(protocol::version_result(requested)));
    }
    let conf = NetConf::parse(stdin)?;
    if matches!(env.command, Command::Status | Command::Gc) && version != "1.1.0" {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            "STATUS and GC need cniVersion 1.1.0",
            format!("got {version}"),
        ));
    }
    match env.command {
        Command::Add => attach::add(&env, &conf).map(|a| {
            let ours = protocol::add_result(version, &a);
            Some(match &conf.prev_result {
                Some(prev) => protocol::merge_prev(prev, ours),
                None => ours,
            })
        }),
        Command::Del => attach::del(&env, &conf).map(|()| None),
        Command::Check => attach::check(&env, &conf).map(|()| None),
        Command::Status => attach::status(&env, &conf).map(|()| None),
        Command::Gc => attach::gc(&env, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}
