//! The `openhqm` binary with the built-in demo processor.

fn main() -> std::process::ExitCode {
    openhqm::main_with(std::sync::Arc::new(openhqm_worker::DemoProcessor))
}
