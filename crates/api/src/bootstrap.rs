//! The bootstrap token: what keeps a fresh node from being claimed by whoever reaches it first.
//!
//! A node that is not part of a cluster makes a random token at its first start, writes it to
//! `DATA_DIR/bootstrap-token` (mode 0600, [`BOOTSTRAP_TOKEN_FILE`]) and prints it. The
//! unauthenticated bootstrap routes (`/v1/bootstrap/create_cluster`, `/join_cluster`) refuse
//! a request without it in [`BOOTSTRAP_TOKEN_HEADER`] (401, naming the file and the CLI flag).
//! Once the node created or joined a cluster the token is gone (file removed): from then on the
//! operator's credentials guard everything, and the store refuses a second create or join.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use flotilla_model::rest::{BOOTSTRAP_TOKEN_FILE, BOOTSTRAP_TOKEN_HEADER};

use crate::ApiError;

/// A node's bootstrap token, while it has one. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct BootstrapToken {
    inner: Arc<Mutex<Option<Held>>>,
}

/// The token and where it is kept.
struct Held {
    token: String,
    file: PathBuf,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.inner.lock().expect("bootstrap token lock").is_some();
        f.debug_struct("BootstrapToken")
            .field("held", &held)
            .finish()
    }
}

impl BootstrapToken {
    /// The token of the node whose data dir is `data_dir`: none for a member of a cluster (a
    /// leftover file is removed); for any other node the one in the file, made and written
    /// (0600) when there is none yet. `has_identity`: the node got a uid from a create or join
    /// that may not have completed; it keeps a token it has but makes no new one.
    pub fn prepare(data_dir: &Path, member: bool, has_identity: bool) -> std::io::Result<Self> {
        let file = data_dir.join(BOOTSTRAP_TOKEN_FILE);
        if member {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => return Ok(Self::default()),
            }
        }
        let token = match std::fs::read_to_string(&file) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ if has_identity => None,
            _ => Some(write_new(&file)?),
        };
        let held = token.map(|token| Held { token, file });
        Ok(Self {
            inner: Arc::new(Mutex::new(held)),
        })
    }

    /// The token, while the node has one (to print at start).
    pub fn token(&self) -> Option<String> {
        let held = self.inner.lock().expect("bootstrap token lock");
        held.as_ref().map(|h| h.token.clone())
    }

    /// Lets a bootstrap request through when the node has no token or `headers` carry it.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let held = self.inner.lock().expect("bootstrap token lock");
        let Some(held) = held.as_ref() else {
            return Ok(());
        };
        let given = headers
            .get(BOOTSTRAP_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        let problem = match given {
            None => "this node is not part of a cluster yet and takes create/join only with its bootstrap token",
            Some(given) if flotilla_store::secret_eq(given.trim(), &held.token) => return Ok(()),
            Some(_) => "wrong bootstrap token",
        };
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            error_code: "bootstrap_token_required",
            description: format!(
                "{problem}: pass --bootstrap-token (or FLOTILLA_BOOTSTRAP_TOKEN) with the token \
                 the node's daemon printed at start, also in {} (readable by the daemon's user \
                 only)",
                held.file.display()
            ),
        })
    }

    /// Forgets the token and removes its file: the node is now part of a cluster.
    pub(crate) fn consume(&self) {
        let held = self.inner.lock().expect("bootstrap token lock").take();
        if let Some(held) = held {
            if let Err(e) = std::fs::remove_file(&held.file) {
                tracing::warn!(file = %held.file.display(), error = %e, "removing the used bootstrap token");
            }
        }
    }
}

/// Makes a random token and writes it to `file`, readable by the owner only.
fn write_new(file: &Path) -> std::io::Result<String> {
    let token = flotilla_store::random_secret();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    writeln!(out, "{token}")?;
    out.sync_all()?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn with(token: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(BOOTSTRAP_TOKEN_HEADER, token.parse().unwrap());
        }
        headers
    }

    #[test]
    fn a_fresh_node_makes_an_owner_only_token_and_keeps_it_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = BootstrapToken::prepare(dir.path(), false, false).unwrap();
        let token = first.token().expect("a fresh node has a token");
        assert_eq!(token.len(), 64);
        let file = dir.path().join(BOOTSTRAP_TOKEN_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = BootstrapToken::prepare(dir.path(), false, false).unwrap();
        assert_eq!(
            again.token(),
            Some(token.clone()),
            "same token after a restart"
        );

        let refused = first.check(&with(None)).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(
            refused.description.contains("--bootstrap-token"),
            "{refused}"
        );
        assert!(
            refused.description.contains(BOOTSTRAP_TOKEN_FILE),
            "{refused}"
        );
        assert!(first.check(&with(Some("nope"))).is_err());
        assert!(first.check(&with(Some(&token))).is_ok());

        first.consume();
        assert!(!file.exists(), "used: the file is gone");
        assert!(first.check(&with(None)).is_ok(), "nothing left to check");
    }

    #[test]
    fn a_member_has_no_token_and_a_half_joined_node_makes_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(BOOTSTRAP_TOKEN_FILE);
        std::fs::write(&file, "left over\n").unwrap();
        let member = BootstrapToken::prepare(dir.path(), true, true).unwrap();
        assert_eq!(member.token(), None);
        assert!(!file.exists());
        let half = BootstrapToken::prepare(dir.path(), false, true).unwrap();
        assert_eq!(half.token(), None);
        assert!(!file.exists());
    }
}
