//! The MCP handler: lists the tools and runs a call on its lane, under the
//! caller's own token. Over stdio the token is the process's (from
//! `AIRLOCK_TOKEN` or `--token-file`); over HTTP it is each request's
//! bearer token, verified before the request reaches this handler
//! (`http`), and a session serves only the identity that opened it.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ErrorData as McpError;
use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};

use crate::session::{Holds, Lane, Login, Owner, Started, Waited};
use crate::tools::{self, BadArguments};
use crate::wire::{Caps, Target, application_name};

/// Where the stdio server's token comes from.
#[derive(Clone)]
pub enum LocalToken {
    /// Read once, at start (`AIRLOCK_TOKEN`).
    Fixed(String),
    /// Read again at every login, so a refreshed file is used
    /// (`--token-file`).
    File(PathBuf),
}

impl std::fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalToken::Fixed(_) => f.write_str("LocalToken::Fixed(..)"),
            LocalToken::File(p) => f.debug_tuple("LocalToken::File").field(p).finish(),
        }
    }
}

impl LocalToken {
    pub fn read(&self) -> Result<String, String> {
        match self {
            LocalToken::Fixed(t) => Ok(t.clone()),
            LocalToken::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display())),
        }
    }
}

/// The caller of an HTTP request, as verified from its bearer token.
#[derive(Clone)]
pub struct Caller {
    pub owner: Owner,
    pub token: String,
    /// Whether the call belongs to an MCP session (a lane that outlives
    /// it); without one, each call is its own database session.
    pub in_session: bool,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// What every session of this process shares.
#[derive(Debug)]
pub struct Shared {
    pub target: Target,
    /// The connection's name (`dbname`).
    pub connection: String,
    pub holds: Arc<Holds>,
    pub max_statement_bytes: usize,
    pub max_result_bytes: usize,
    /// stdio's token; `None` over HTTP, where each request brings one.
    pub local: Option<LocalToken>,
}

/// One MCP session's handler (one per stdio process, per legacy HTTP
/// session, or per stateless HTTP request).
#[derive(Debug)]
pub struct Handler {
    shared: Arc<Shared>,
    lane: Arc<Lane>,
}

/// The owner of stdio sessions: the process has one token source.
const LOCAL_OWNER: &str = "stdio";

impl Handler {
    pub fn new(shared: Arc<Shared>) -> Handler {
        Handler {
            shared,
            lane: Arc::new(Lane::default()),
        }
    }

    /// Who calls, with which token.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, String> {
        if let Some(local) = &self.shared.local {
            return Ok(Caller {
                owner: Owner(LOCAL_OWNER.into()),
                token: local.read()?,
                in_session: true,
            });
        }
        let parts = context.extensions.get::<http::request::Parts>();
        let mut caller = parts
            .and_then(|p| p.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| "no verified bearer token came with this request".to_owned())?;
        caller.in_session = parts.is_some_and(|p| p.headers.contains_key("mcp-session-id"));
        Ok(caller)
    }

    async fn run(
        &self,
        context: &RequestContext<RoleServer>,
        caller: Caller,
        sql: String,
        params: Vec<Option<String>>,
        max_rows: usize,
    ) -> CallToolResult {
        let client = context.client_info();
        let in_session = caller.in_session;
        let login = Login {
            target: self.shared.target.clone(),
            database: self.shared.connection.clone(),
            application_name: application_name(
                client.as_ref().map(|c| (c.name.as_str(), c.version.as_str())),
            ),
            token: caller.token,
            owner: caller.owner,
        };
        let caps = Caps {
            max_rows,
            max_bytes: self.shared.max_result_bytes,
        };
        let cancelled = context.ct.cancelled();
        match self
            .lane
            .start(&self.shared.holds, &login, sql, params, caps, cancelled)
            .await
        {
            Ok(Started::Ended(outcome)) => tools::ended_in(&outcome, None, in_session),
            Ok(Started::Held(hold)) => tools::held(&hold, None),
            Err(busy) => tools::refused(&busy.to_string()),
        }
    }

    async fn call(
        &self,
        name: &str,
        args: rmcp::model::JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, BadArguments> {
        let caller = match self.caller(context) {
            Ok(c) => c,
            Err(e) => return Ok(tools::refused(&e)),
        };
        let max = self.shared.max_statement_bytes;
        match name {
            "query" => {
                let sql = tools::statement(tools::string(&args, "sql")?, max)?;
                let params = tools::params(&args)?;
                let rows = tools::optional_count(&args, "max_rows", 1, tools::MAX_ROWS_LIMIT as u64)?
                    .map_or(tools::DEFAULT_MAX_ROWS, |n| n as usize);
                Ok(self.run(context, caller, sql, params, rows).await)
            }
            "explain" => {
                let sql = tools::statement(tools::explain(&tools::string(&args, "sql")?), max)?;
                let params = tools::params(&args)?;
                Ok(self
                    .run(context, caller, sql, params, tools::MAX_ROWS_LIMIT)
                    .await)
            }
            "list_tables" => {
                let (sql, params) = tools::list_tables(tools::optional_string(&args, "schema")?);
                Ok(self
                    .run(context, caller, sql, params, tools::MAX_ROWS_LIMIT)
                    .await)
            }
            "describe_table" => {
                let (sql, params) = tools::describe_table(
                    tools::string(&args, "table")?,
                    tools::optional_string(&args, "schema")?,
                );
                Ok(self
                    .run(context, caller, sql, params, tools::MAX_ROWS_LIMIT)
                    .await)
            }
            "wait_for_decision" => {
                let id = tools::string(&args, "request_id")?;
                let wait = tools::optional_count(&args, "timeout_s", 1, tools::MAX_WAIT.as_secs())?
                    .map_or(tools::DEFAULT_WAIT, Duration::from_secs);
                Ok(match self.shared.holds.wait(&caller.owner, &id, wait).await {
                    Waited::Ended(e) => tools::ended_in(&e.1, Some(&e.0.request_id), caller.in_session),
                    Waited::StillHeld(hold) => tools::held(&hold, Some(wait)),
                    Waited::Unknown => tools::refused(&format!(
                        "no statement of yours is held by this server under request {id} (or it ended more than \
                         10 minutes ago); use the request_id that query returned"
                    )),
                })
            }
            other => Err(BadArguments(format!("there is no tool named {other:?}"))),
        }
    }
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("airlock-mcp", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "SQL through Airlock, a human checkpoint: reads usually run at once; gated statements are held for a \
             reviewer (query returns status \"held\" and a request_id; call wait_for_decision). Never retry a \
             denied or refused statement."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::all()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::all().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name: Cow<'_, str> = request.name.clone();
        if self.get_tool(&name).is_none() {
            return Err(McpError::invalid_params(
                format!("there is no tool named {name:?}"),
                None,
            ));
        }
        let args = tools::object(request.arguments);
        let result = match self.call(&name, args, &context).await {
            Ok(r) => r,
            Err(bad) => tools::refused(&bad.0),
        };
        Ok(result.into())
    }
}
