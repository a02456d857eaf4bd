//! `airlock-control`: see `airlock_control::cli`.

fn main() -> std::process::ExitCode {
    airlock_control::cli::main()
}
