//! The `openhqm` binary with the built-in demo processor.

// The hot path allocates many short-lived buffers (bodies, envelopes, records)
// across threads; mimalloc measured faster than glibc malloc here (see bench/).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    openhqm::main_with(std::sync::Arc::new(openhqm_worker::DemoProcessor))
}
