//! xlaned: the xlane dataplane daemon (a thin binary over the `xlaned` library).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    xlane_config::init_logging();
    let run = xlaned::config::Config::resolve(xlaned::config::Args::parse()).and_then(|cfg| xlaned::daemon::run(&cfg));
    if let Err(e) = run {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
