//! The `sse-gateway` binary; everything it does lives in the library's `cli` module.

/// jemalloc: it leaves the untouched pages of a connection's buffers out of resident
/// memory, where glibc's malloc made them resident (benches/load/README.md, "Allocator").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    sse_gateway::cli::main()
}
