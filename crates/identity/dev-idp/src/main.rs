//! `airlock-dev-idp`: a local OIDC issuer for development and tests only.
//! Never for production. Everything lives in the library; see `run`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = airlock_dev_idp::Cli::parse();
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    airlock_dev_idp::run(cli).await?;
    Ok(())
}
