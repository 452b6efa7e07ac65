//! The `sse-gateway` binary; everything it does lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    sse_gateway::cli::main()
}
