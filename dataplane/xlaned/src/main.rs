//! xlaned: the xlane dataplane daemon (a thin binary over the `xlaned` library).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(true)
        .init();
    let run = xlaned::config::Config::resolve(xlaned::config::Args::parse()).and_then(|cfg| xlaned::daemon::run(&cfg));
    if let Err(e) = run {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
