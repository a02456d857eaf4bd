//! `airlock-reviewer --config airlock.yaml`: see `airlock_reviewer::cli`.

fn main() -> std::process::ExitCode {
    airlock_reviewer::cli::main()
}
