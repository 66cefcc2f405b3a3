//! Sessions whose code runs in a child `kiln-executor` process.

use crate::error::CError;
use crate::ffi::types::*;
use kiln_core::Session;
use kiln_remote::{Options, RemoteExecutor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The environment variable naming the executor program (as for `kiln run --executor spawn`).
const EXECUTOR_ENV: &str = "KILN_EXECUTOR";
const EXECUTOR_NAME: &str = "kiln-executor";

/// A session whose code runs in a new child process running `program`, or the executor found
/// as [`find_executor`] says.
pub(crate) fn spawned_session(program: Option<&Path>) -> Result<Session, CError> {
    let program = match program {
        Some(p) => p.to_path_buf(),
        None => find_executor()?,
    };
    let executor = RemoteExecutor::spawn(&program, &[], Options::default())?;
    Ok(Session::new(Arc::new(executor)))
}

/// The `kiln-executor` to run: `$KILN_EXECUTOR`, else one next to this program, else one on
/// `$PATH`. (`kiln run` can fall back to itself acting as an executor; a C program cannot.)
fn find_executor() -> Result<PathBuf, CError> {
    if let Some(p) = std::env::var_os(EXECUTOR_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut searched = Vec::new();
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name(EXECUTOR_NAME);
        if sibling.is_file() {
            return Ok(sibling);
        }
        searched.push(sibling.display().to_string());
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join(EXECUTOR_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    searched.push("$PATH".into());
    Err(CError::new(
        KILN_ERROR_NOT_FOUND,
        format!(
            "cannot find {EXECUTOR_NAME}: {EXECUTOR_ENV} is not set and it is not in {} \
             (install it with scripts/install-capi, or pass its path)",
            searched.join(" or ")
        ),
    ))
}
