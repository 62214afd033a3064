//! Running it in production: `--check-config`, `--log-format json`, the
//! systemd unit and the example settings file (`packaging/`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::Server;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Run the daemon with `args`; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env_remove("SWITCHBOARD_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_every_problem_and_binds_nothing() {
    // A port in use: checking binds nothing, so it does not matter.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let (code, out, err) = run(&["--check-config", "--listen", &listen]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("configuration ok"), "{out}");
    assert!(out.contains(&listen), "{out}");

    let dir = std::env::temp_dir().join(format!("sb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "ping_interval = \"soon\"\nmax_connections = 0\n").unwrap();
    let secret = "short-key";
    let (code, out, err) = run(&[
        "--check-config",
        "--config",
        file.to_str().unwrap(),
        "--api-key",
        secret,
        "--log-format",
        "xml",
        "--cluster",
        "redis://nowhere:notaport",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    for setting in [
        "ping_interval",
        "max_connections",
        "--api-key",
        "--log-format",
        "--cluster",
    ] {
        assert!(err.contains(setting), "{setting} not named in:\n{err}");
    }
    assert!(err.contains("5 problem(s)"), "{err}");
    assert!(!err.contains(secret), "a secret was echoed:\n{err}");
    // A cross-setting problem too, once every setting is valid.
    let (code, _, err) = run(&["--check-config", "--metrics-require-key", "true"]);
    assert_eq!(code, 2);
    assert!(err.contains("--api-key"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_logs_are_one_object_a_line_with_their_fields() {
    let server = Server::start(&["--log-format", "json"]);
    let c = server.joined("/ws/lobby?user=ann");
    c.close();
    let mut lines: Vec<String> = server.startup_log.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l| l.contains("closed by client")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        lines.push(server.log.recv_timeout(left).expect("a close line"));
    }
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for o in &objects {
        for key in ["time", "level", "target", "message"] {
            assert!(o[key].is_string(), "no {key}: {o}");
        }
        assert!(o["time"].as_str().unwrap().ends_with('Z'), "{o}");
    }
    let open = objects
        .iter()
        .find(|o| o["message"].as_str().unwrap().contains(" open "))
        .expect("an open line");
    assert_eq!(
        (open["user"].as_str(), open["room"].as_str()),
        (Some("ann"), Some("lobby"))
    );
    assert!(open["conn"].is_string(), "{open}");
    let closed = objects
        .iter()
        .find(|o| o["message"].as_str().unwrap().contains("closed by client"))
        .expect("a close line");
    assert_eq!(closed["code"], 1000);
    assert_eq!(closed["level"], "INFO");
}

#[test]
fn the_example_settings_file_lists_every_setting_with_its_default() {
    let path = repo("packaging/switchboard.example.toml");
    let expected = switchboard::config::example_toml();
    if std::env::var_os("WRITE_SWITCHBOARD_EXAMPLE").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text == expected,
        "packaging/switchboard.example.toml is out of date: \
         WRITE_SWITCHBOARD_EXAMPLE=1 cargo test --test operations example"
    );
    // Every flag of --help is in the file, and every setting of the file
    // is a flag of --help.
    let (_, help, _) = run(&["--help"]);
    let flags: Vec<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .filter(|f| !["config", "check-config", "help", "version"].contains(f))
        .map(|f| f.replace('-', "_"))
        .collect();
    let settings: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim_start_matches("# ").split_once(" = "))
        .map(|(name, _)| name.to_string())
        .collect();
    let mut a = flags.clone();
    a.sort();
    a.dedup();
    let mut b = settings.clone();
    b.sort();
    assert_eq!(a, b, "--help and the file list the same settings");
    // And the daemon takes the file as it is.
    let (code, out, err) = run(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo("packaging/switchboard.service")).unwrap();
    for line in [
        "Restart=on-failure",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze not found: only the unit's text was checked");
        return;
    };
    // Verified with this build's binary in place of the installed path.
    let dir = std::env::temp_dir().join(format!("sb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let local = unit.replace("/usr/local/bin/switchboard", bin);
    let path = dir.join("switchboard.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new(analyze)
        .args(["verify", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    let own: Vec<&str> = err.lines().filter(|l| l.contains("switchboard")).collect();
    assert!(own.is_empty(), "warnings about the unit: {own:?}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
