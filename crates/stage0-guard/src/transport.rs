//! The stdio transport: rmcp's newline-delimited JSON-RPC codec with a decided maximum message
//! size, behind a gate that holds the client to the MCP lifecycle (`docs/contract.md` §11).
//!
//! Two things protect the server from the bytes on stdin:
//!
//! - **A maximum message size**, [`MAX_MESSAGE_BYTES`] (4 MiB per line, newline included). rmcp's
//!   own reader ([`AsyncRwTransport::with_max_line_length`]) never buffers more than that: a
//!   longer line is dropped as it streams in, logged, and the connection stays open. Without the
//!   cap (rmcp's default is 16 MiB) one 16 MiB `tools/call` made the server peak at about
//!   200 MiB, since a message is held as bytes, as parsed JSON and as a result that repeats it.
//! - **The lifecycle gate**, [`LifecycleGate`]. rmcp ends the whole session when anything other
//!   than a request arrives before `initialize` (the process exited with status 2 on a stray
//!   `notifications/initialized`), and it answers a second `initialize` by switching the
//!   session's protocol version and client capabilities mid-session. The gate drops
//!   notifications and responses that come before `initialize` (with a warning) and refuses a
//!   second `initialize` with JSON-RPC error `-32600` (Invalid Request).
//!
//!   It also refuses, with `-32600`, a request whose id is the id of a request still in flight.
//!   rmcp keys its in-flight requests by id, so the second request took over the first one's
//!   slot: the first answer then went out as the answer to the second, and the second was never
//!   answered. MCP forbids reusing an id within a session; the gate remembers each id until the
//!   response to its request has gone out (or been dropped, see below), so what it holds is
//!   bounded by the requests in flight.
//! - **A bound on the requests in flight**, [`DEFAULT_MAX_CALLS_IN_FLIGHT`] unless
//!   [`LifecycleGate::with_max_calls_in_flight`] says otherwise (`STAGE0_MAX_CALLS_IN_FLIGHT`).
//!   A request holds its place from the moment the gate lets it through until its response has
//!   been written to stdout, so the requests read, the calls running and the answers waiting for
//!   a slow reader are bounded together. One request more is refused at once with JSON-RPC error
//!   [`BUSY`] (`-32000`, "too many requests in flight"), never queued: a client that pipelines a
//!   flood gets an answer to each request, and the server holds at most the limit.
//!
//! - **No repeated keys**, [`DuplicateKeyReader`]. rmcp parses each line into a
//!   `serde_json::Value`, which keeps only the last of a repeated key: `{"topic":"a","topic":"b"}`
//!   reaches a tool as `b`, though another reader of the same bytes (a log, a proxy that checked
//!   them) sees `a`. No handler can tell afterwards, so the reader looks at each line before
//!   rmcp does ([`json::first_duplicate_key`]). A line that repeats a key anywhere is not given to
//!   rmcp: it is parsed here, put aside, and a `ping` with an unguessable id takes its place in
//!   the stream, so the gate gets it back in the same place and order. Then:
//!   - a `tools/call` whose repeated key is inside `params.arguments` reaches the guard marked
//!     with the [`DuplicateKey`] (a request extension, which the client cannot send): the call is
//!     an invalid argument (an `isError` result naming the key), and nothing is checked or run;
//!   - any other request that repeats a key (its `method`, the tool's `name`, `id`, ...) is
//!     refused with `-32600`, as it cannot be routed for sure;
//!   - a notification that repeats a key is dropped; a response (an answer to an elicitation,
//!     say) becomes an error response for its id, so what waited for it fails closed.
//!
//!   The cost is one more parse of each line (without building a value) and, for the line being
//!   read, a second buffer of at most [`MAX_MESSAGE_BYTES`]. A line over the maximum is passed on
//!   unread, for rmcp to drop. Only this crate's stdio transport does this; a server that serves
//!   the guard over another transport gets `serde_json`'s reading.
//!
//! **Cancellation.** `notifications/cancelled` for a request in flight does not reach rmcp: the
//! gate marks the request cancelled through a token in its extensions ([`cancelled`] waits on it,
//! and on rmcp's own token), and drops the response when the handler produces it, so the
//! client gets no answer (as MCP asks) and the id stays reserved until then. rmcp, told of the
//! cancellation, would forget the id at once and drop the response itself, out of the gate's
//! sight; a request reusing the id could then take the id's slot in rmcp, and the cancelled
//! call's answer, still on its way, went out as the answer to the new request (a `publish-content`
//! got the cancelled `research-topic`'s `ALLOW`). Everything else passes through untouched.
//!
//! rmcp also serves clients that never send `initialize` (the stateless 2026-07-28 style, with
//! the protocol version in each request's `_meta`). Their requests pass the gate as before, and
//! their cancellations are carried out by the gate; their other notifications are dropped.
//!
//! What rmcp already does, and this module relies on: a line that is not JSON is dropped
//! silently; JSON that is not a JSON-RPC message (a batch array, for instance) is answered with
//! `-32600`; requests before `initialize` other than `ping` get an error and leave the session
//! waiting for `initialize`.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use rmcp::RoleServer;
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, ClientRequest, ErrorCode, ErrorData, GetExtensions,
    JsonRpcMessage, RequestId, ServerJsonRpcMessage,
};
use rmcp::service::{RequestContext, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::io::{StdioReader, StdioWriter, stdio_pipes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::json::{self, DuplicateKey};

/// The largest JSON-RPC message the server reads from stdin: 4 MiB, counting the newline.
///
/// Far above any real tool call (the arguments are a topic, a few names and numbers), small
/// enough that one message costs tens of MiB at most: a `tools/call` of this size, whose result
/// repeats its topic four times, peaks at about 56 MiB in a release build (measured; an idle
/// server holds about 8 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The transport rmcp's reading ends up behind: its line transport over a [`DuplicateKeyReader`],
/// behind a [`LifecycleGate`].
pub type Guarded<R, W> = LifecycleGate<AsyncRwTransport<RoleServer, DuplicateKeyReader<R>, W>>;

/// How many requests the gate lets be in flight at once when it is not told otherwise
/// (`STAGE0_MAX_CALLS_IN_FLIGHT`): 64.
///
/// A request holds its message (up to [`MAX_MESSAGE_BYTES`]), what its handler makes of it and,
/// until stdout has taken it, its answer, which may repeat its arguments: tens of MiB for the
/// largest message, a few KiB for a real tool call. 64 is twice the 32 in flight the soak runs
/// (`docs/robustness.md`); a client that needs more in flight at once sets the variable.
pub const DEFAULT_MAX_CALLS_IN_FLIGHT: usize = 64;

/// The JSON-RPC error code of a request refused because the limit of requests in flight was
/// reached: `-32000`, the first of the codes JSON-RPC 2.0 leaves to the server.
pub const BUSY: ErrorCode = ErrorCode(-32000);

/// Waits until the client has cancelled `request` (`notifications/cancelled`, marked by the
/// [`LifecycleGate`]) or rmcp has (the session ended): what a handler that stops early waits on.
pub async fn cancelled(request: &RequestContext<RoleServer>) {
    match request.extensions.get::<ClientCancellation>() {
        Some(client) => tokio::select! {
            () = client.0.cancelled() => {}
            () = request.ct.cancelled() => {}
        },
        None => request.ct.cancelled().await,
    }
}

/// The token the gate cancels when the client cancels a request, put in the request's
/// extensions (and so in its handler's `RequestContext`).
#[derive(Debug, Clone)]
struct ClientCancellation(CancellationToken);

/// The transport the server binary serves: stdin and stdout through [`bounded`].
///
/// Must be called inside a Tokio runtime (on Linux the pipes are registered with its reactor).
pub fn stdio() -> Guarded<StdioReader, StdioWriter> {
    let (read, write) = stdio_pipes();
    bounded(read, write)
}

/// rmcp's line-delimited JSON-RPC transport over `read` and `write`, reading lines of at most
/// [`MAX_MESSAGE_BYTES`] through a [`DuplicateKeyReader`], behind a [`LifecycleGate`].
pub fn bounded<R, W>(read: R, write: W) -> Guarded<R, W>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let put_aside = PutAside::default();
    let read = DuplicateKeyReader::new(read, &put_aside);
    let mut gate = LifecycleGate::new(
        AsyncRwTransport::new_server(read, write).with_max_line_length(MAX_MESSAGE_BYTES),
    );
    gate.put_aside = put_aside;
    gate
}

/// The lines [`DuplicateKeyReader`] put aside, by the id of the `ping` that took each one's place.
type PutAside = Arc<Mutex<HashMap<Arc<str>, Repeating>>>;

/// How the id of a stand-in `ping` begins; a v4 UUID follows, so a client cannot guess one.
const STAND_IN_ID: &str = "stage0-guard/repeated-key/";

/// rmcp's own test for a byte-order mark at the start of a line, which it skips.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The client's bytes on their way to rmcp, line by line: a line whose JSON repeats a key is put
/// aside for the [`LifecycleGate`] and a stand-in `ping` goes in its place (see the module
/// documentation). Every other byte passes unchanged.
pub struct DuplicateKeyReader<R> {
    inner: R,
    /// The line being read; at most [`MAX_MESSAGE_BYTES`].
    line: Vec<u8>,
    /// What rmcp may read, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
    /// In a line over the maximum, passed on unread up to its newline (rmcp drops it).
    passing: bool,
    eof: bool,
    put_aside: PutAside,
}

impl<R> DuplicateKeyReader<R> {
    /// A reader of `inner` that puts lines repeating a key aside into `put_aside`.
    fn new(inner: R, put_aside: &PutAside) -> Self {
        DuplicateKeyReader {
            inner,
            line: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            passing: false,
            eof: false,
            put_aside: Arc::clone(put_aside),
        }
    }

    /// Takes in `data`, the next bytes from the client, and moves whatever rmcp may read now to
    /// `ready`.
    fn take_in(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let newline = data.iter().position(|&byte| byte == b'\n');
            let (part, rest) = data.split_at(newline.map_or(data.len(), |at| at + 1));
            data = rest;
            if self.passing {
                self.ready.extend_from_slice(part);
                self.passing = newline.is_none();
            } else if self.line.len() + part.len() > MAX_MESSAGE_BYTES {
                // rmcp counts the same bytes, newline included, and drops the line.
                self.ready.append(&mut self.line);
                self.ready.extend_from_slice(part);
                self.passing = newline.is_none();
            } else {
                self.line.extend_from_slice(part);
                if newline.is_some() {
                    let line = std::mem::take(&mut self.line);
                    let line = self.stand_in_for(line);
                    self.ready.extend_from_slice(&line);
                }
            }
        }
    }

    /// `line` itself, or, when its JSON repeats a key and is a message rmcp would read, a `ping`
    /// standing in for it while it waits in [`PutAside`].
    fn stand_in_for(&self, line: Vec<u8>) -> Vec<u8> {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
        let Ok(Some(duplicate)) = json::first_duplicate_key(text) else {
            return line;
        };
        // serde refuses a repeated field of a typed struct (`method`, `id`) but not a repeated key
        // in a free-form object (`arguments`, `_meta`); read the message as `serde_json` keeps
        // it, last key winning, so that it can be refused by its id.
        let message = serde_json::from_slice::<ClientJsonRpcMessage>(text).or_else(|_| {
            serde_json::from_slice::<serde_json::Value>(text).and_then(serde_json::from_value)
        });
        let Ok(message) = message else {
            // Not a message: rmcp drops it or answers `-32600`, whatever its keys.
            return line;
        };
        let id: Arc<str> = format!("{STAND_IN_ID}{}", Uuid::new_v4()).into();
        let stand_in = format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"ping"}}"#);
        lock(&self.put_aside).insert(id, Repeating { message, duplicate });
        let mut stand_in = stand_in.into_bytes();
        stand_in.push(b'\n');
        stand_in
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DuplicateKeyReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let count = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + count]);
                this.ready_at += count;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // An unterminated last line goes on as it is; rmcp ignores it.
                if this.line.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = std::mem::take(&mut this.line);
                continue;
            }
            // Not zeroed: the reader fills what it reports, and zeroing 8 KiB on every read was a
            // fifth of a call's instructions with the audit log off (BENCHMARKS.md).
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 8 * 1024];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.take_in(read.filled());
            }
        }
    }
}

/// A message whose line repeated a key, and the first key it repeated.
struct Repeating {
    message: ClientJsonRpcMessage,
    duplicate: DuplicateKey,
}

fn lock(put_aside: &PutAside) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Repeating>> {
    // A panic while holding the lock leaves at most one message not inserted or not removed.
    put_aside
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Holds the messages from the client to the MCP lifecycle: nothing but requests before
/// `initialize`, only one `initialize`, no id shared by two requests in flight, at most so many
/// requests in flight, and no answer to a cancelled request.
///
/// Wraps any server-side rmcp [`Transport`]; what the server sends passes through unchanged,
/// except the answer to a request the client cancelled, which is dropped.
pub struct LifecycleGate<T> {
    inner: T,
    initialized: bool,
    /// The client's requests passed on whose response has not gone out yet.
    in_flight: HashMap<RequestId, InFlight>,
    /// One permit per request that may be in flight.
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    /// The messages a [`DuplicateKeyReader`] in front of `inner` put aside.
    put_aside: PutAside,
}

/// A request the gate let through.
struct InFlight {
    /// Cancelled when the client cancels the request.
    cancellation: CancellationToken,
    /// Its place among the requests in flight, given back once its response is written.
    slot: OwnedSemaphorePermit,
}

/// What the gate does with one incoming message.
enum Admission {
    Pass(ClientJsonRpcMessage),
    /// A notification, response or error before `initialize`, or a notification that repeats a
    /// key: nothing to answer. Says what was dropped, for the log.
    Drop(&'static str),
    /// A cancellation the gate carried out itself.
    Done,
    /// A second `initialize`, a request reusing an id in flight, or one over the limit of
    /// requests in flight: answered with this error, not passed on.
    Refuse(ServerJsonRpcMessage, String),
}

impl<T> LifecycleGate<T> {
    /// A gate in front of `inner`, waiting for `initialize`, letting
    /// [`DEFAULT_MAX_CALLS_IN_FLIGHT`] requests be in flight at once.
    pub fn new(inner: T) -> Self {
        LifecycleGate {
            inner,
            initialized: false,
            in_flight: HashMap::new(),
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CALLS_IN_FLIGHT)),
            max_in_flight: DEFAULT_MAX_CALLS_IN_FLIGHT,
            put_aside: PutAside::default(),
        }
    }

    /// [`Admission::Pass`] of `message` or, when it is the stand-in `ping` of a line that repeats
    /// a key, of that line's message; or what the gate does instead of passing it on. What passes
    /// here still goes through the rest of [`admit`](LifecycleGate::admit).
    fn put_back(&mut self, message: ClientJsonRpcMessage) -> Admission {
        let ClientJsonRpcMessage::Request(request) = &message else {
            return Admission::Pass(message);
        };
        let RequestId::String(id) = &request.id else {
            return Admission::Pass(message);
        };
        if !id.starts_with(STAND_IN_ID) {
            return Admission::Pass(message);
        }
        let Some(Repeating { message, duplicate }) = lock(&self.put_aside).remove(id) else {
            return Admission::Pass(message);
        };
        match message {
            ClientJsonRpcMessage::Request(mut request) => {
                if let ClientRequest::CallToolRequest(call) = &mut request.request
                    && let Some(within) = duplicate.within_arguments()
                {
                    // For the guard, which refuses the call as an invalid argument.
                    call.extensions.insert(within);
                    return Admission::Pass(ClientJsonRpcMessage::Request(request));
                }
                let why = format!(
                    "the request repeats the key {duplicate}: a key may appear only once in an \
                     object"
                );
                let answer = ErrorData::invalid_request(why, None);
                Admission::Refuse(
                    ServerJsonRpcMessage::error(answer, Some(request.id)),
                    "a request repeats a key".to_owned(),
                )
            }
            ClientJsonRpcMessage::Notification(_) => {
                Admission::Drop("a notification that repeats a key")
            }
            // An answer with two readings is no answer: whatever waits for it fails.
            ClientJsonRpcMessage::Response(response) => {
                let why = format!("the client's response repeats the key {duplicate}");
                let error = ErrorData::invalid_request(why, None);
                Admission::Pass(ClientJsonRpcMessage::error(error, Some(response.id)))
            }
            error @ ClientJsonRpcMessage::Error(_) => Admission::Pass(error),
        }
    }

    /// The same gate, letting at most `limit` requests (at least one) be in flight at once.
    pub fn with_max_calls_in_flight(self, limit: usize) -> Self {
        let limit = limit.max(1);
        LifecycleGate {
            slots: Arc::new(Semaphore::new(limit)),
            max_in_flight: limit,
            ..self
        }
    }

    /// Decides about `message`, and records the `initialize` and the requests it lets through
    /// (and the cancellations of those).
    fn admit(&mut self, message: ClientJsonRpcMessage) -> Admission {
        let message = match self.put_back(message) {
            Admission::Pass(message) => message,
            instead => return instead,
        };
        match message {
            ClientJsonRpcMessage::Request(mut request) => {
                let initialize = matches!(request.request, ClientRequest::InitializeRequest(_));
                let refusal = if initialize && self.initialized {
                    Some(ErrorData::invalid_request(
                        "the session is already initialized",
                        None,
                    ))
                } else if self.in_flight.contains_key(&request.id) {
                    Some(ErrorData::invalid_request(
                        "a request with this id is still in flight",
                        None,
                    ))
                } else {
                    None
                };
                let slot = match refusal {
                    Some(refusal) => Err(refusal),
                    None => Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
                        ErrorData::new(
                            BUSY,
                            format!(
                                "too many requests in flight: this server takes {} at once \
                                 (STAGE0_MAX_CALLS_IN_FLIGHT); nothing was done, retry once one \
                                 has been answered",
                                self.max_in_flight
                            ),
                            Some(serde_json::json!({"max_in_flight": self.max_in_flight})),
                        )
                    }),
                };
                let slot = match slot {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        let why = refusal.message.to_string();
                        let answer = ServerJsonRpcMessage::error(refusal, Some(request.id));
                        return Admission::Refuse(answer, why);
                    }
                };
                self.initialized |= initialize;
                let cancellation = CancellationToken::new();
                request
                    .request
                    .extensions_mut()
                    .insert(ClientCancellation(cancellation.clone()));
                self.in_flight
                    .insert(request.id.clone(), InFlight { cancellation, slot });
                Admission::Pass(ClientJsonRpcMessage::Request(request))
            }
            ClientJsonRpcMessage::Notification(notification) => {
                if let ClientNotification::CancelledNotification(cancelled) =
                    &notification.notification
                    && let Some(id) = &cancelled.params.request_id
                    && let Some(request) = self.in_flight.get(id)
                {
                    // Kept from rmcp, which would forget the id and drop the answer out of
                    // sight: the handler stops on the token, and `note_sent` drops the answer.
                    // Before `initialize` too, since rmcp never sees it.
                    request.cancellation.cancel();
                    return Admission::Done;
                }
                if self.initialized {
                    Admission::Pass(ClientJsonRpcMessage::Notification(notification))
                } else {
                    Admission::Drop("a notification")
                }
            }
            other if self.initialized => Admission::Pass(other),
            ClientJsonRpcMessage::Response(_) => Admission::Drop("a response"),
            ClientJsonRpcMessage::Error(_) => Admission::Drop("an error response"),
        }
    }

    /// Forgets the request that `message`, on its way to the client, answers (if it does): its
    /// place among the requests in flight (to give back once the message is written), and
    /// whether the client cancelled it, in which case the message is not sent.
    fn note_sent(&mut self, message: &ServerJsonRpcMessage) -> Sent {
        let answered = match message {
            JsonRpcMessage::Response(response) => Some(&response.id),
            JsonRpcMessage::Error(error) => error.id.as_ref(),
            JsonRpcMessage::Request(_) | JsonRpcMessage::Notification(_) => None,
        };
        match answered.and_then(|id| self.in_flight.remove(id)) {
            None => Sent::Pass(None),
            Some(request) if request.cancellation.is_cancelled() => Sent::Cancelled,
            Some(request) => Sent::Pass(Some(request.slot)),
        }
    }
}

/// What the gate does with a message the server sends.
enum Sent {
    /// Send it; the place of the request it answers (if any) is given back once it is written.
    Pass(Option<OwnedSemaphorePermit>),
    /// Drop it: it answers a request the client cancelled.
    Cancelled,
}

impl<T: Transport<RoleServer>> Transport<RoleServer> for LifecycleGate<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let sent = match self.note_sent(&item) {
            Sent::Pass(slot) => Some((slot, self.inner.send(item))),
            Sent::Cancelled => None,
        };
        async move {
            let Some((_slot, sending)) = sent else {
                return Ok(());
            };
            sending.await
        }
    }

    /// The next message that passes the gate; `None` when the inner transport is closed.
    ///
    /// Cancel-safe as long as the inner `receive` is (rmcp's is): the gate's state changes only
    /// after a message has been received, and a refusal is sent from its own task, so dropping
    /// this future never loses or half-writes anything.
    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let message = self.inner.receive().await?;
            match self.admit(message) {
                Admission::Pass(message) => return Some(message),
                Admission::Drop(what) => {
                    tracing::warn!("dropped {what}");
                }
                Admission::Done => {}
                Admission::Refuse(answer, why) => {
                    tracing::warn!("refused a request: {why}");
                    // Not through `self.send`: the id refused belongs to a request in flight.
                    let sent = self.inner.send(answer);
                    tokio::spawn(async move {
                        if let Err(error) = sent.await {
                            tracing::warn!("could not send a refusal: {error}");
                        }
                    });
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
    use tokio::time::{Duration, timeout};

    /// The longest any step of these tests may take.
    const BOUND: Duration = Duration::from_secs(10);

    /// The client's end of an in-process session: the real server (simulator mode) behind
    /// [`bounded`], over in-memory pipes.
    struct Client {
        write: DuplexStream,
        read: Lines<BufReader<DuplexStream>>,
        server: tokio::task::JoinHandle<bool>,
    }

    impl Client {
        fn start() -> Client {
            use rmcp::ServiceExt;
            /// A server with nothing but what rmcp answers by default: the gate is under test.
            struct Bare;
            impl rmcp::ServerHandler for Bare {}
            let (client_write, server_read) = tokio::io::duplex(64 * 1024);
            let (server_write, client_read) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(async move {
                match Bare.serve(bounded(server_read, server_write)).await {
                    Ok(service) => service.waiting().await.is_ok(),
                    Err(_) => false,
                }
            });
            Client {
                write: client_write,
                read: BufReader::new(client_read).lines(),
                server,
            }
        }

        async fn send_bytes(&mut self, bytes: &[u8]) {
            timeout(BOUND, self.write.write_all(bytes))
                .await
                .expect("the server reads")
                .expect("the pipe is open");
        }

        async fn send(&mut self, message: Value) {
            self.send_bytes(format!("{message}\n").as_bytes()).await;
        }

        async fn next(&mut self) -> Value {
            let line = timeout(BOUND, self.read.next_line())
                .await
                .expect("the server answers in time")
                .expect("the pipe is readable")
                .expect("the server has not closed stdout");
            serde_json::from_str(&line).expect("the server writes JSON")
        }

        async fn initialize(&mut self, id: u64, protocol_version: &str) -> Value {
            self.send(
                json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
                    "protocolVersion": protocol_version,
                    "capabilities": {},
                    "clientInfo": {"name": "gate-test", "version": "0"}
                }}),
            )
            .await;
            self.next().await
        }

        async fn ping(&mut self, id: u64) -> Value {
            self.send(json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
                .await;
            self.next().await
        }

        /// Closes stdin; whether the server loop then ended cleanly.
        async fn finish(self) -> bool {
            drop(self.write);
            timeout(BOUND, self.server)
                .await
                .expect("the server stops in time")
                .expect("the server task does not panic")
        }
    }

    #[tokio::test]
    async fn notifications_and_responses_before_initialize_are_dropped_not_fatal() {
        let mut client = Client::start();
        client
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        client
            .send(
                json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                         "params": {"requestId": 1}}),
            )
            .await;
        client
            .send(json!({"jsonrpc": "2.0", "id": 99, "result": {}}))
            .await;
        client
            .send(json!({"jsonrpc": "2.0", "id": 98, "error": {"code": -1, "message": "x"}}))
            .await;
        let answer = client.initialize(1, "2025-11-25").await;
        assert_eq!(answer["id"], 1);
        assert_eq!(answer["result"]["protocolVersion"], "2025-11-25");
        assert_eq!(client.ping(2).await["result"], json!({}));
        assert!(client.finish().await, "the session ended with an error");
    }

    #[tokio::test]
    async fn a_second_initialize_is_refused_and_changes_nothing() {
        let mut client = Client::start();
        client.initialize(1, "2025-11-25").await;
        let second = client.initialize(2, "2024-11-05").await;
        assert_eq!(second["id"], 2);
        assert_eq!(second["error"]["code"], -32600, "{second}");
        assert!(second.get("result").is_none(), "{second}");
        // The session goes on as first negotiated, and a third attempt is refused as well.
        assert_eq!(client.ping(3).await["result"], json!({}));
        assert_eq!(
            client.initialize(4, "2025-06-18").await["error"]["code"],
            -32600
        );
        assert!(client.finish().await, "the session ended with an error");
    }

    /// One message from the client, as the transport would have parsed it.
    fn from_client(message: Value) -> ClientJsonRpcMessage {
        serde_json::from_value(message).expect("a client message")
    }

    /// The answer to request `id`, as the server would send it.
    fn answer(id: i64) -> ServerJsonRpcMessage {
        ServerJsonRpcMessage::response(
            rmcp::model::ServerResult::EmptyResult(().into()),
            RequestId::Number(id),
        )
    }

    #[test]
    fn a_request_reusing_an_id_in_flight_is_refused_until_its_answer_goes_out_or_is_dropped() {
        let mut gate = LifecycleGate::new(());
        let call = || {
            from_client(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                               "params": {"name": "research-topic", "arguments": {}}}))
        };
        let initialize = from_client(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "gate-test", "version": "0"}}}));
        assert!(matches!(gate.admit(initialize), Admission::Pass(_)));
        assert!(matches!(gate.admit(call()), Admission::Pass(_)));
        let Admission::Refuse(refusal, _) = gate.admit(call()) else {
            panic!("a duplicate id in flight passed");
        };
        let refusal = serde_json::to_value(refusal).expect("the refusal serialises");
        assert_eq!(refusal["id"], 7);
        assert_eq!(refusal["error"]["code"], -32600);

        // Answered: the id may be used again.
        assert!(matches!(gate.note_sent(&answer(7)), Sent::Pass(Some(_))));
        let Admission::Pass(passed) = gate.admit(call()) else {
            panic!("an answered id was refused");
        };
        // Cancelled by the client: the gate keeps the cancellation from rmcp, marks the request,
        // and the id stays reserved while the cancelled call is still in flight...
        let ClientJsonRpcMessage::Request(passed) = passed else {
            panic!("a request passed as something else");
        };
        let token = passed
            .request
            .extensions()
            .get::<ClientCancellation>()
            .expect("the gate's cancellation token")
            .0
            .clone();
        let cancelled = from_client(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                           "params": {"requestId": 7}}),
        );
        assert!(matches!(gate.admit(cancelled), Admission::Done));
        assert!(token.is_cancelled());
        assert!(matches!(gate.admit(call()), Admission::Refuse(..)));
        // ...until its answer comes by, which is dropped, not sent.
        assert!(matches!(gate.note_sent(&answer(7)), Sent::Cancelled));
        assert!(matches!(gate.admit(call()), Admission::Pass(_)));
        // In flight now: `initialize` (never answered here) and the last call.
        let mut ids: Vec<_> = gate.in_flight.keys().cloned().collect();
        ids.sort_by_key(|id| format!("{id}"));
        assert_eq!(ids, [RequestId::Number(1), RequestId::Number(7)]);
    }

    #[test]
    fn a_request_over_the_limit_is_refused_at_once_and_its_place_comes_back_when_one_is_answered() {
        let mut gate = LifecycleGate::new(()).with_max_calls_in_flight(2);
        let ping = |id: u64| from_client(json!({"jsonrpc": "2.0", "id": id, "method": "ping"}));
        assert!(matches!(gate.admit(ping(1)), Admission::Pass(_)));
        assert!(matches!(gate.admit(ping(2)), Admission::Pass(_)));
        let Admission::Refuse(refusal, _) = gate.admit(ping(3)) else {
            panic!("a third request in flight passed");
        };
        let refusal = serde_json::to_value(refusal).expect("the refusal serialises");
        assert_eq!(refusal["id"], 3);
        assert_eq!(refusal["error"]["code"], BUSY.0);
        assert_eq!(refusal["error"]["data"]["max_in_flight"], 2);
        // The place comes back once the answer has been written, not before.
        let Sent::Pass(Some(slot)) = gate.note_sent(&answer(1)) else {
            panic!("no place given back");
        };
        assert!(matches!(gate.admit(ping(3)), Admission::Refuse(..)));
        drop(slot);
        assert!(matches!(gate.admit(ping(3)), Admission::Pass(_)));
    }

    /// A `ping` with id 2, padded to exactly `len` bytes, newline included.
    fn padded_ping(len: usize) -> Vec<u8> {
        let head = br#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"pad":""#;
        let tail = b"\"}}\n";
        let mut line = head.to_vec();
        line.resize(len - tail.len(), b'a');
        line.extend_from_slice(tail);
        assert_eq!(line.len(), len);
        line
    }

    impl Client {
        /// Writes `line`, which is longer than the duplex pipe (64 KiB): the server's task
        /// drains the pipe as it reads (or discards) the line.
        async fn write_long(&mut self, line: &[u8]) {
            timeout(BOUND, self.write.write_all(line))
                .await
                .expect("the line is consumed in time")
                .expect("the server reads");
        }
    }

    #[tokio::test]
    async fn a_line_over_the_maximum_is_dropped_and_the_next_one_is_read() {
        let mut client = Client::start();
        client.initialize(1, "2025-11-25").await;
        client.write_long(&padded_ping(MAX_MESSAGE_BYTES + 1)).await;
        let answer = client.ping(3).await;
        assert_eq!(
            answer["id"], 3,
            "the oversized request was answered: {answer}"
        );
        assert!(client.finish().await, "the session ended with an error");
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_maximum_is_read() {
        let mut client = Client::start();
        client.initialize(1, "2025-11-25").await;
        client.write_long(&padded_ping(MAX_MESSAGE_BYTES)).await;
        assert_eq!(client.next().await["id"], 2);
        assert!(client.finish().await, "the session ended with an error");
    }

    /// Everything a [`DuplicateKeyReader`] over `input` gives rmcp, and what it put aside.
    async fn read_through(input: &[u8]) -> (Vec<u8>, PutAside) {
        use tokio::io::AsyncReadExt;
        let put_aside = PutAside::default();
        let mut reader = DuplicateKeyReader::new(input, &put_aside);
        let mut out = Vec::new();
        timeout(BOUND, reader.read_to_end(&mut out))
            .await
            .expect("the reader ends")
            .expect("reading a slice cannot fail");
        (out, put_aside)
    }

    #[tokio::test]
    async fn a_line_that_repeats_a_key_is_put_aside_and_a_ping_stands_in_for_it() {
        let clean = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let repeating = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{"topic":"a","topic":"b"}}}"#;
        let not_a_message = r#"{"a":1,"a":2}"#;
        let input = format!("{clean}\n\u{feff}{repeating}\r\n{not_a_message}\n{clean}");
        let (out, put_aside) = read_through(input.as_bytes()).await;
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.split('\n').collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], clean);
        assert_eq!(
            lines[2], not_a_message,
            "rmcp refuses what is no message, as before"
        );
        assert_eq!(
            lines[3], clean,
            "an unterminated last line goes on as it is"
        );
        let stand_in: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(stand_in["method"], "ping");
        let id = stand_in["id"].as_str().unwrap();
        assert!(id.starts_with(STAND_IN_ID), "{id}");
        let put_aside = lock(&put_aside);
        assert_eq!(put_aside.len(), 1);
        assert_eq!(put_aside[id].duplicate.pointer, "/params/arguments/topic");
    }

    #[tokio::test]
    async fn a_line_over_the_maximum_passes_unread_whatever_its_keys() {
        let mut line = padded_ping(MAX_MESSAGE_BYTES + 1);
        line.splice(1..1, br#""id":9,"#.iter().copied());
        let (out, put_aside) = read_through(&line).await;
        assert_eq!(out, line);
        assert!(lock(&put_aside).is_empty());
    }

    /// A gate behind which `lines` were read, and the messages rmcp would then have parsed.
    async fn gate_after(lines: &str) -> (LifecycleGate<()>, Vec<ClientJsonRpcMessage>) {
        let (out, put_aside) = read_through(lines.as_bytes()).await;
        let mut gate = LifecycleGate::new(());
        gate.put_aside = put_aside;
        let initialize = from_client(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "gate-test", "version": "0"}}}));
        assert!(matches!(gate.admit(initialize), Admission::Pass(_)));
        let messages = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| from_client(serde_json::from_str(line).unwrap()))
            .collect();
        (gate, messages)
    }

    #[tokio::test]
    async fn a_tool_call_that_repeats_an_argument_reaches_the_guard_marked_with_the_key() {
        let (mut gate, messages) = gate_after(concat!(
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{"a":{"b":1,"b":2}}}}"#,
            "\n"
        ))
        .await;
        let [message] = <[_; 1]>::try_from(messages).unwrap();
        let Admission::Pass(ClientJsonRpcMessage::Request(request)) = gate.admit(message) else {
            panic!("the call did not pass");
        };
        assert_eq!(request.id, RequestId::Number(2));
        let ClientRequest::CallToolRequest(call) = &request.request else {
            panic!("not the call: {request:?}");
        };
        assert_eq!(
            call.extensions.get::<DuplicateKey>(),
            Some(&DuplicateKey {
                key: "b".to_owned(),
                pointer: "/a/b".to_owned()
            })
        );
        assert!(gate.in_flight.contains_key(&RequestId::Number(2)));
        assert!(lock(&gate.put_aside).is_empty());
    }

    #[tokio::test]
    async fn a_request_repeating_a_key_elsewhere_is_refused_and_a_notification_dropped() {
        let (mut gate, messages) = gate_after(concat!(
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a","name":"b","arguments":{}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"requestId":4}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":7,"result":{"action":"decline","action":"accept"}}"#,
            "\n",
        ))
        .await;
        let mut admitted = messages.into_iter().map(|message| gate.admit(message));
        let Some(Admission::Refuse(refusal, _)) = admitted.next() else {
            panic!("the call with two names was not refused");
        };
        let refusal = serde_json::to_value(refusal).unwrap();
        assert_eq!(refusal["id"], 3);
        assert_eq!(refusal["error"]["code"], -32600);
        let message = refusal["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("the request repeats the key `name` (at `/params/name`)"),
            "{message}"
        );
        assert!(matches!(admitted.next(), Some(Admission::Drop(_))));
        let Some(Admission::Pass(ClientJsonRpcMessage::Error(answer))) = admitted.next() else {
            panic!("the response with two actions was not turned into an error");
        };
        assert_eq!(answer.id, Some(RequestId::Number(7)));
        assert!(!gate.in_flight.contains_key(&RequestId::Number(3)));
    }

    #[tokio::test]
    async fn a_session_goes_on_after_a_request_that_repeats_a_key() {
        let mut client = Client::start();
        client.initialize(1, "2025-11-25").await;
        client
            .send_bytes(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"method\":\"ping\"}\n")
            .await;
        let refused = client.next().await;
        assert_eq!(refused["id"], 2, "{refused}");
        assert_eq!(refused["error"]["code"], -32600, "{refused}");
        assert_eq!(client.ping(3).await["result"], json!({}));
        assert!(client.finish().await, "the session ended with an error");
    }
}
