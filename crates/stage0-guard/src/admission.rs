//! The places a request holds in the HTTP server's bounds, and how long a tool call may take.
//!
//! Every message to `/mcp` counts its body's bytes ([`Admissions::admit`]), and a request (not a
//! response or a notification: the answer to a call's question, a cancellation) also takes a
//! place among the requests in flight, in total and for its principal ([`Place::request_of`]);
//! over any bound it is refused, never queued. A message gives its place back when its HTTP
//! exchange ends, except a `tools/call`:
//! at 2025-11-25 rmcp answers that POST at once with an SSE stream and runs the call in the
//! session's worker, so the exchange says nothing about the call. A call's place therefore rides
//! with the request into the handler as a [`CallBounds`] (a request extension, which the client
//! cannot send), and [`GuardedServer`](crate::server::GuardedServer) holds it for the whole call,
//! approval wait included, at both revisions. The same value carries the call's deadline and a
//! token that ends it early: when the client goes away (its response stream is dropped), when its
//! session is deleted, when the server stops. Ending a call cancels it as the client's own
//! `notifications/cancelled` would: a check in progress is dropped and nothing runs; a body that
//! has started runs to its end.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The bounds on the requests and calls in flight of one HTTP server, and what is in flight now.
#[derive(Debug)]
pub(crate) struct Admissions {
    in_flight: Mutex<InFlight>,
    /// Woken when the last place is given back.
    drained: Notify,
    max_in_flight: usize,
    max_per_principal: usize,
    max_bytes: usize,
}

/// What is in flight now.
#[derive(Debug, Default)]
struct InFlight {
    /// Every message being read or served, requests or not.
    messages: usize,
    bytes: usize,
    /// The requests (and tool calls) among them, in all and per principal.
    requests: usize,
    per_principal: HashMap<String, usize>,
    /// Set when the server stops: new requests are refused while those in flight finish.
    closing: bool,
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A bound is reached (`429`).
    Busy,
    /// The server is stopping (`503`).
    Stopping,
}

/// One message's place in the bounds (its bytes, and for a request its place among the
/// requests of its principal), given back when dropped.
#[derive(Debug)]
pub(crate) struct Place {
    admissions: Arc<Admissions>,
    bytes: usize,
    /// The principal of a request; `None` for a response or a notification.
    principal: Option<String>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut in_flight = self.admissions.lock();
        in_flight.messages -= 1;
        in_flight.bytes -= self.bytes;
        if let Some(principal) = &self.principal {
            in_flight.requests -= 1;
            if let Some(count) = in_flight.per_principal.get_mut(principal) {
                *count -= 1;
                if *count == 0 {
                    in_flight.per_principal.remove(principal);
                }
            }
        }
        if in_flight.messages == 0 {
            self.admissions.drained.notify_waiters();
        }
    }
}

impl Admissions {
    /// Bounds of `max_in_flight` requests in total, `max_per_principal` per principal and
    /// `max_bytes` bytes of request bodies (each at least 1).
    pub(crate) fn new(max_in_flight: usize, max_per_principal: usize, max_bytes: usize) -> Self {
        Admissions {
            in_flight: Mutex::new(InFlight::default()),
            drained: Notify::new(),
            max_in_flight: max_in_flight.max(1),
            max_per_principal: max_per_principal.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a message with a body of `bytes`, or says why not. A message is always
    /// let in when nothing else is in flight, however large its body.
    pub(crate) fn admit(self: &Arc<Self>, bytes: usize) -> Result<Place, Refusal> {
        let mut in_flight = self.lock();
        if in_flight.closing {
            return Err(Refusal::Stopping);
        }
        if in_flight.messages > 0 && in_flight.bytes + bytes > self.max_bytes {
            return Err(Refusal::Busy);
        }
        in_flight.messages += 1;
        in_flight.bytes += bytes;
        Ok(Place {
            admissions: Arc::clone(self),
            bytes,
            principal: None,
        })
    }

    /// Refuses new requests and waits until every place is given back: the requests in flight
    /// and the tool calls, which end by their deadline at the latest.
    pub(crate) async fn drain(&self) {
        self.lock().closing = true;
        loop {
            let notified = self.drained.notified();
            if self.lock().messages == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Place {
    /// Counts this message as a request of `principal`, or says why not: the requests in flight
    /// are at their bound, in all or for `principal`. Responses and notifications (the answer to
    /// a question a call of the principal's asked, a cancellation) never need this, so a
    /// principal at its bound can still answer and cancel its own calls.
    pub(crate) fn request_of(&mut self, principal: &str) -> Result<(), Refusal> {
        let mut in_flight = self.admissions.lock();
        let mine = in_flight.per_principal.get(principal).copied().unwrap_or(0);
        if in_flight.requests >= self.admissions.max_in_flight
            || mine >= self.admissions.max_per_principal
        {
            return Err(Refusal::Busy);
        }
        in_flight.requests += 1;
        in_flight
            .per_principal
            .insert(principal.to_owned(), mine + 1);
        self.principal = Some(principal.to_owned());
        Ok(())
    }
}

/// A tool call's place, deadline and early end, from the HTTP request that carried it to the
/// handler that runs it (a request extension). Clones share one slot, so whichever copy of the
/// request outlives the call, the handler alone holds the bounds once it has
/// [`taken`](CallBounds::take) them. The place is shared with the call's response stream: it is
/// given back once the call has ended and its answer has been written (or its client has gone).
#[derive(Debug, Clone)]
pub(crate) struct CallBounds(Arc<Mutex<Option<Bounds>>>);

/// What [`CallBounds`] carries.
#[derive(Debug)]
pub(crate) struct Bounds {
    place: Arc<Place>,
    /// When the call is ended if it has not finished.
    deadline: Instant,
    /// Cancelled to end the call early: its client went away, its session was deleted.
    end: CancellationToken,
}

impl CallBounds {
    /// The bounds of a call holding `place`, ended at `deadline` or when `end` is cancelled.
    pub(crate) fn new(place: Arc<Place>, deadline: Instant, end: CancellationToken) -> Self {
        CallBounds(Arc::new(Mutex::new(Some(Bounds {
            place,
            deadline,
            end,
        }))))
    }

    /// The bounds, for the handler that runs the call; `None` once taken.
    pub(crate) fn take(&self) -> Option<Bounds> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Bounds {
    /// Runs `call` within these bounds: at the deadline, or when the call is ended early, `cancel`
    /// (the request's own cancellation token) is cancelled and `call` is awaited to its end, which
    /// is then prompt (a check is dropped; a body that has started finishes). The place is held
    /// until `call` has returned.
    pub(crate) async fn hold<F: Future>(self, cancel: &CancellationToken, call: F) -> F::Output {
        tokio::pin!(call);
        let why = tokio::select! {
            biased;
            output = &mut call => return output,
            () = tokio::time::sleep_until(self.deadline) => "it passed its deadline",
            () = self.end.cancelled() => "its client went away or its session ended",
        };
        cancel.cancel();
        let output = call.await;
        drop(self.place);
        // Logged once the handler's share of the place is given back.
        tracing::warn!("a tool call was ended: {why}");
        output
    }
}
