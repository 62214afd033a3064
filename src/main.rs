//! The switchboard daemon: command line → Config → logging → Server::run.

use std::process::ExitCode;

use switchboard::config::{Command, Config};
use switchboard::Server;

fn main() -> ExitCode {
    let config =
        match Config::from_args_and_env(std::env::args_os().skip(1), std::env::vars().collect()) {
            Ok(Command::Run(config)) => *config,
            Ok(Command::Check(config, problems)) => return check(&config, &problems),
            Ok(Command::Help(text)) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Ok(Command::Version) => {
                println!("switchboard {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("switchboard: {e}");
                return ExitCode::from(2);
            }
        };
    switchboard::logging::init(config.log_level, config.log_format);
    raise_fd_limit();
    log::info!("settings: {config:?}");
    let server = match Server::bind(config.clone()) {
        Ok(server) => server.handle_signals(true),
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server stopped: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--check-config`: every problem on stderr (exit 2), or a summary of
/// what would run on stdout (exit 0). Nothing is bound or connected.
fn check(config: &Config, problems: &[switchboard::config::ConfigError]) -> ExitCode {
    if problems.is_empty() {
        let cluster = match config.cluster.len() {
            0 => "a single node".to_string(),
            n => format!("cluster mode over {n} Redis shard(s)"),
        };
        println!(
            "configuration ok: switchboard on {}, {cluster}",
            config.listen
        );
        return ExitCode::SUCCESS;
    }
    for p in problems {
        eprintln!("switchboard: {p}");
    }
    eprintln!(
        "switchboard: {} problem(s) in the configuration",
        problems.len()
    );
    ExitCode::from(2)
}

/// Raise the soft open-file limit to the hard limit: every connection is a descriptor.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("could not raise the open-file limit");
            }
        }
        log::info!("open-file limit: {}", lim.rlim_cur);
    }
}
