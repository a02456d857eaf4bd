//! `airlock-dev-idp`: a local OpenID Connect issuer for Airlock development
//! and tests. **Development only, never production**: its signing key sits
//! unprotected in a file, and anyone who can run it can mint any identity.
//!
//! Owns: the command line ([`cli`]), the signing key file ([`key`]), minting
//! Entra-shaped v2 access tokens ([`token`]), and serving OIDC discovery and
//! the JWKS on loopback ([`server`]), browser sign-in with the
//! authorization code flow and PKCE for test users ([`login`]), sign-in
//! from a terminal with the device authorization grant ([`device`]), and a
//! stand-in for Microsoft Graph's group membership questions ([`graph`]).
//!
//! It does not verify anything: that is `airlock-identity`, which the tests
//! use to check this issuer's tokens exactly as the proxy would.

pub mod cli;
pub mod device;
pub mod error;
pub mod graph;
pub mod key;
pub mod login;
pub mod server;
pub mod token;

use std::io::Write;

pub use cli::{Cli, Command};
pub use error::DevIdpError;

/// Printed at the start of every command, on standard error.
pub const WARNING: &str = "airlock-dev-idp: DEVELOPMENT ONLY, NEVER PRODUCTION. \
Its signing key is an unprotected file and it mints any identity on request.";

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), DevIdpError> {
    eprintln!("{WARNING}");
    match cli.command {
        Command::Serve(args) => {
            // Refuse a bad address or issuer before creating any key file.
            server::check_listen(args.listen)?;
            server::issuer_prefix(&args.issuer)?;
            let login = args
                .login_config
                .as_deref()
                .map(login::LoginConfig::load)
                .transpose()?;
            let graph = args.graph_config.as_deref().map(graph::Graph::load).transpose()?;
            let key = key::SigningKey::load_or_create(&args.key_file)?;
            server::serve(args.listen, &args.issuer, key, login, graph).await
        }
        Command::Token(args) => {
            let key = key::SigningKey::load_or_create(&args.key_file)?;
            let token = token::mint(&key, &args.request())?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{token}").map_err(DevIdpError::Output)?;
            Ok(())
        }
    }
}
