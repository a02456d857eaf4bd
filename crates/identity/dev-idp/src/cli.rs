//! The command line. Parsing only; [`crate::run`] acts on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::token::{PrincipalKind, TokenRequest};

const ABOUT: &str = "A local OIDC issuer for Airlock development and tests. \
DEVELOPMENT ONLY, NEVER PRODUCTION.";

const LONG_ABOUT: &str = "A local OIDC issuer for Airlock development and tests.

DEVELOPMENT ONLY, NEVER PRODUCTION: the signing key is an unprotected file,
and anyone who can run this program can mint a token for any identity.

`serve` publishes OIDC discovery and the JWKS on a loopback address, so
Airlock's `identity:` section can point `issuer` at it; with --login-config it
also lets a browser sign in as a listed test user (authorization code + PKCE),
as the reviewer UI does against Entra ID in production. `token` prints an
access token shaped like a Microsoft Entra ID v2 token, signed with the same
key file, for agents (`--app` for app-only tokens) and reviewers.";

/// Default address, issuer and audience: `serve` and `token` agree without flags.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";
pub const DEFAULT_ISSUER: &str = "http://127.0.0.1:9400";
pub const DEFAULT_KEY_FILE: &str = "airlock-dev-idp.key.pem";
pub const DEFAULT_TENANT: &str = "00000000-0000-4000-8000-00000000d3f0";
pub const DEFAULT_CLIENT: &str = "00000000-0000-4000-8000-0000000c11e7";

#[derive(Debug, Parser)]
#[command(name = "airlock-dev-idp", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve OIDC discovery and the JWKS on loopback. DEVELOPMENT ONLY, NEVER PRODUCTION.
    Serve(ServeArgs),
    /// Print a signed Entra-shaped v2 access token. DEVELOPMENT ONLY, NEVER PRODUCTION.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Issuer URL, the `iss` of the tokens; discovery is served under its path.
    #[arg(long, default_value = DEFAULT_ISSUER)]
    pub issuer: String,
    /// Signing key file (PKCS#8 PEM); created, readable by the owner only, if missing.
    #[arg(long, default_value = DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,
    /// Browser sign-in for development: a YAML file listing OAuth clients
    /// (client_id, redirect_uris) and test users (sub, name, groups). With
    /// it, the issuer serves an authorization page to pick a test user and a
    /// token endpoint (authorization code + PKCE S256).
    #[arg(long)]
    pub login_config: Option<PathBuf>,
    /// A Graph stand-in for group overage: a YAML file with the client_id
    /// allowed to ask, the environment variable holding its secret
    /// (client_secret_env) and `members` (object id -> group ids). With it,
    /// the token endpoint also takes the client-credentials grant and
    /// `<issuer>/graph/v1.0/{users|servicePrincipals}/{id}/checkMemberGroups`
    /// answers from the file (and the login file's users).
    #[arg(long)]
    pub graph_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Signing key file (PKCS#8 PEM); created if missing.
    #[arg(long, default_value = DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,
    /// Issuer URL (`iss`); must match what `serve` was given.
    #[arg(long, default_value = DEFAULT_ISSUER)]
    pub issuer: String,
    /// Audience (`aud`): Airlock's `identity.audience`.
    #[arg(long, default_value = "api://airlock")]
    pub audience: String,
    /// Object id of the caller (`oid` and `sub`).
    #[arg(long)]
    pub sub: String,
    /// Display name (`name` for users, `app_displayname` for apps).
    #[arg(long)]
    pub name: String,
    /// Group object id (or any string) for the groups claim; repeatable.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// App role for the roles claim; repeatable.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// An app-only token (`idtyp=app`, no `scp`), as an agent's workload gets.
    #[arg(long)]
    pub app: bool,
    /// Lifetime, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Tenant id (`tid`).
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    /// Client application id (`azp`).
    #[arg(long, default_value = DEFAULT_CLIENT)]
    pub client_id: String,
    /// Delegated scopes (`scp`) of user tokens, space-separated.
    #[arg(long, default_value = "access_as_user")]
    pub scope: String,
    /// Group overage, as Entra issues it for a caller in more than 200
    /// groups: no groups claim, `_claim_names`/`_claim_sources` pointing to
    /// Graph instead.
    #[arg(long)]
    pub overage: bool,
    /// Authentication context met by the sign-in (`acrs`); repeatable.
    #[arg(long = "acr")]
    pub acrs: Vec<String>,
}

impl TokenArgs {
    pub fn request(&self) -> TokenRequest {
        TokenRequest {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            subject: self.sub.clone(),
            name: self.name.clone(),
            groups: self.groups.clone(),
            roles: self.roles.clone(),
            kind: if self.app {
                PrincipalKind::App
            } else {
                PrincipalKind::User
            },
            ttl: self.ttl,
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            scope: self.scope.clone(),
            overage: self.overage,
            acrs: self.acrs.clone(),
        }
    }
}
