//! The OpenHQM binary as a library: CLI, configuration layering, wiring and
//! telemetry. A Rust user plugs in their own processor by calling
//! [`main_with`] from their own `main` (see `examples/custom_processor.rs`).

pub mod cli;
pub mod config;
mod telemetry;
mod wiring;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
pub use openhqm_worker::{Output, Processor, Request};

/// Parses the command line and runs it with `processor` as the workers' logic.
#[must_use]
pub fn main_with(processor: Arc<dyn Processor>) -> ExitCode {
    let cli = cli::Cli::parse();
    let sources = cli.sources();
    let (config, mut errors) = config::load_all(&sources);
    if let cli::Command::CheckConfig = cli.command {
        errors.extend(config::file_problems(&config));
        return cli::check_config(&config, &errors);
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: invalid configuration: {e}");
        }
        eprintln!(
            "{} configuration error(s); run `openhqm check-config` to see the effective configuration",
            errors.len()
        );
        return ExitCode::from(2);
    }
    let mode = match cli.command {
        cli::Command::Serve => wiring::Mode::Serve,
        cli::Command::Listener => wiring::Mode::Listener,
        cli::Command::Worker => wiring::Mode::Worker,
        cli::Command::CheckConfig => return ExitCode::SUCCESS,
    };
    telemetry::init(&config.monitoring);
    raise_open_file_limit();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("openhqm");
    if config.server.workers > 0 {
        runtime.worker_threads(config.server.workers);
    }
    let result = match runtime.build() {
        Ok(rt) => {
            let result = rt.block_on(wiring::run(config, mode, processor));
            // A blocking task stuck in a failed storage engine must not
            // hold the exit.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            result
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "openhqm stopped on an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every client connection, backend connection and open storage file is a
/// descriptor, and the usual soft limit (1024) is far below what a server
/// needs and what the hard limit allows: raise the soft limit to the hard
/// one, as Go's runtime does for every program.
fn raise_open_file_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
}
