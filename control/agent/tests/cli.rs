//! The agent's configuration sources: flags beat the environment beats the file beats
//! the defaults; an unknown key in the file is an error that names it.

use std::process::Command;

fn run(args: &[&str], env: Option<(&str, &str)>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlane-agent"));
    c.args(args).env_remove("XLANE_AGENT_SOCKET").env_remove("XLANE_AGENT_CONFIG");
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(!out.status.success(), "no agent listens on these sockets");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = std::env::temp_dir().join(format!("xlane-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "socket = \"/nonexistent/from-file.sock\"\nlease-ttl = 60\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    assert!(run(&["status"], None).contains("/run/xlane/agent.sock"), "default");
    assert!(run(&["--config", cfg, "status"], None).contains("from-file.sock"));
    let env = Some(("XLANE_AGENT_SOCKET", "/nonexistent/from-env.sock"));
    assert!(run(&["--config", cfg, "status"], env).contains("from-env.sock"));
    assert!(
        run(&["--config", cfg, "--socket", "/nonexistent/from-flag.sock", "status"], env).contains("from-flag.sock")
    );
    std::fs::write(dir.join("bad.toml"), "sokcet = \"/x\"\n").unwrap();
    let e = run(&["--config", dir.join("bad.toml").to_str().unwrap(), "status"], None);
    assert!(e.contains("unknown field") && e.contains("sokcet"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn logs_are_plain_lines_on_a_pipe() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlane-agent"));
    c.args(["--socket", "/nonexistent/agent.sock", "status"])
        .env_remove("XLANE_AGENT_CONFIG")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info");
    let out = c.output().unwrap();
    assert!(!out.status.success(), "no agent listens on this socket");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERROR") && err.contains("agent.sock"), "{err}");
    assert!(!err.contains('\x1b'), "escape bytes in a piped log: {err:?}");
}
