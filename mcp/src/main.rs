//! `airlock-mcp --config airlock.yaml --connection NAME`: see `airlock_mcp::Args`.

fn main() -> std::process::ExitCode {
    airlock_mcp::main()
}
