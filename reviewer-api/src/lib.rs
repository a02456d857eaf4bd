//! `airlock-reviewer`: REST, server-sent events, web UI and webhooks for reviewers.
//!
//! Not built yet: reserved by the workspace layout, filled in by the reviewer issue.
