//! The end-to-end tests, one module per file, in one test binary: each
//! binary links the whole stack, so one link serves them all. Tests run in
//! parallel threads; each starts its own stack (servers, ports, temp
//! directories), so none shares state with another. Run one file's tests
//! with `cargo test -p airlock-e2e --test e2e <module>::`.

mod approval;
mod binaries;
mod bounded;
mod browser;
mod catalog;
mod config_check;
mod config_schema;
mod deploy;
mod differential;
mod drivers;
mod entra;
mod fleet;
mod forward;
mod grants;
mod health;
mod impact;
mod kubernetes;
mod lifetimes;
mod mcp;
mod reload;
mod reviewer;
mod shadow;
mod slack;
mod stack;
mod webhooks;
