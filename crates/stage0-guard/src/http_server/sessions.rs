//! Who opened each 2025-11-25 session, and how many sessions each principal may hold.
//!
//! rmcp keeps the sessions (`Mcp-Session-Id`); this keeps their owners beside them. A session
//! belongs to the principal whose `initialize` opened it: a request on it from anyone else is
//! answered `404`, as if it did not exist, so another tenant's token and a stolen session id
//! together still cannot answer its questions, call through it or delete it. Opening a session
//! takes one of [`Sessions::max_total`] and of its principal's share; over either the `initialize`
//! is refused (`429`). Each session has a token that ends its calls in flight when it is deleted.
//! Sessions rmcp has closed by itself (idle, or the server stopping) are forgotten the next time a
//! count reaches its bound.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tokio_util::sync::CancellationToken;

/// The owners of the open sessions and the bounds on their number.
#[derive(Debug)]
pub(super) struct Sessions {
    owners: Mutex<Owners>,
    /// rmcp's sessions, to forget those it has closed.
    manager: Arc<LocalSessionManager>,
    max_total: usize,
    max_per_principal: usize,
}

#[derive(Debug, Default)]
struct Owners {
    open: HashMap<String, Session>,
    /// `initialize` requests in flight, per principal: sessions about to open.
    opening: HashMap<String, usize>,
}

#[derive(Debug)]
struct Session {
    principal: String,
    /// Cancelled when the session is deleted: ends its calls in flight.
    end: CancellationToken,
}

/// What a request naming a session may do.
pub(super) enum Access {
    /// The session is the caller's: its calls end with this token.
    Owner(CancellationToken),
    /// Not a session this server opened (or one it forgot): rmcp answers for it.
    Unknown,
    /// Another principal's session: answered `404`.
    Foreign,
}

/// A place for a session being opened, given back unless [`Opening::opened`] records it.
pub(super) struct Opening<'a> {
    sessions: &'a Sessions,
    principal: String,
}

impl Sessions {
    /// At most `max_total` sessions in all and `max_per_principal` per principal (each ≥ 1), over
    /// the sessions of `manager`.
    pub(super) fn new(
        manager: Arc<LocalSessionManager>,
        max_total: usize,
        max_per_principal: usize,
    ) -> Self {
        Sessions {
            owners: Mutex::new(Owners::default()),
            manager,
            max_total: max_total.max(1),
            max_per_principal: max_per_principal.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `principal` may do with session `id`.
    pub(super) fn access(&self, id: &str, principal: &str) -> Access {
        match self.lock().open.get(id) {
            None => Access::Unknown,
            Some(session) if session.principal == principal => Access::Owner(session.end.clone()),
            Some(_) => Access::Foreign,
        }
    }

    /// A place for a new session of `principal`, or `None` when a bound is reached (after
    /// forgetting the sessions rmcp has closed).
    pub(super) async fn open(&self, principal: &str) -> Option<Opening<'_>> {
        if !self.has_room(&self.lock(), principal) {
            self.forget_closed().await;
        }
        let mut owners = self.lock();
        if !self.has_room(&owners, principal) {
            return None;
        }
        *owners.opening.entry(principal.to_owned()).or_default() += 1;
        Some(Opening {
            sessions: self,
            principal: principal.to_owned(),
        })
    }

    fn has_room(&self, owners: &Owners, principal: &str) -> bool {
        let opening: usize = owners.opening.values().sum();
        let mine = owners
            .open
            .values()
            .filter(|session| session.principal == principal)
            .count()
            + owners.opening.get(principal).copied().unwrap_or(0);
        owners.open.len() + opening < self.max_total && mine < self.max_per_principal
    }

    /// Forgets the sessions rmcp no longer holds (closed when idle, or at the stop).
    async fn forget_closed(&self) {
        let live: HashSet<String> = self
            .manager
            .sessions
            .read()
            .await
            .keys()
            .map(|id| id.to_string())
            .collect();
        self.lock().open.retain(|id, session| {
            let keep = live.contains(id);
            if !keep {
                session.end.cancel();
            }
            keep
        });
    }

    /// Ends session `id` (deleted by its owner): its calls in flight are ended and it is forgotten.
    pub(super) fn end(&self, id: &str) {
        if let Some(session) = self.lock().open.remove(id) {
            session.end.cancel();
        }
    }
}

impl Opening<'_> {
    /// Records session `id` as opened by this place's principal.
    pub(super) fn opened(self, id: &str) {
        let mut owners = self.sessions.lock();
        owners.open.insert(
            id.to_owned(),
            Session {
                principal: self.principal.clone(),
                end: CancellationToken::new(),
            },
        );
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut owners = self.sessions.lock();
        if let Some(count) = owners.opening.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                owners.opening.remove(&self.principal);
            }
        }
    }
}
