//! A scriptable fake Stage0 on 127.0.0.1 for the robustness tests: raw HTTP/1.1 over TCP, so a
//! test decides per request exactly what goes on the wire (any status and bytes, a body sent in
//! two halves with a pause, a closed connection, no answer at all).
//!
//! The test hands [`FakeStage0::start`] a script: a function from what arrived (the
//! `X-Request-Id`, the intent's `goal`, and how often this request id was seen before) to the
//! [`Reply`]. The fake records every request and what became of it ([`Exchange`]), so a test can
//! compare what the server did with what the authority actually said. Connections are kept alive
//! as a real server would, so the client's connection pool is exercised too.
//!
//! Waits on the fake ([`FakeStage0::wait_until`]) are bounded by the caller.

// Each test crate uses its own part of this module; the rest would be reported as dead code.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete response: status, extra headers and body (with a `content-length`).
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The head and the first half of the body at once, the second half after `pause`.
    SlowBody {
        status: u16,
        body: Vec<u8>,
        pause: Duration,
    },
    /// Closes the connection without a response.
    Close,
    /// No answer until the client gives up and closes the connection.
    Hang,
}

impl Reply {
    /// `status` with `body` as JSON.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::Answer {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    /// A bare status with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply::Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// One request the fake received and what became of it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The `X-Request-Id` header (empty when absent).
    pub request_id: String,
    /// The intent's `goal` (empty when the body had none).
    pub goal: String,
    /// How many earlier requests carried the same `X-Request-Id` (0 for the first).
    pub attempt: usize,
    /// What happened to it so far.
    pub fate: Fate,
}

/// What became of a request at the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Received, not yet answered or abandoned.
    Pending,
    /// A whole response was written: its status and body.
    Answered { status: u16, body: Vec<u8> },
    /// The fake closed the connection without answering ([`Reply::Close`]).
    ClosedByFake,
    /// The client closed the connection before the fake answered.
    ClosedByClient,
}

/// What the script sees of a request.
pub struct Received<'a> {
    pub request_id: &'a str,
    pub goal: &'a str,
    pub attempt: usize,
}

type Script = dyn Fn(&Received<'_>) -> Reply + Send + Sync;

struct State {
    script: Box<Script>,
    exchanges: Mutex<Vec<Exchange>>,
    /// How often each `X-Request-Id` arrived since the last `clear`: a map, not a scan of the
    /// exchanges, so a soak of 100,000 requests does not make the fake quadratic.
    attempts: Mutex<HashMap<String, usize>>,
    open_connections: Mutex<usize>,
    changed: watch::Sender<u64>,
}

/// The running fake; it stops with the test's runtime.
#[derive(Clone)]
pub struct FakeStage0 {
    base_url: String,
    state: Arc<State>,
}

impl FakeStage0 {
    /// Listens on 127.0.0.1 (a free port) and answers every request as `script` says.
    pub async fn start(script: impl Fn(&Received<'_>) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let base_url = format!("http://{}", listener.local_addr().expect("an address"));
        let state = Arc::new(State {
            script: Box::new(script),
            exchanges: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            open_connections: Mutex::new(0),
            changed: watch::Sender::new(0),
        });
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Without it, a head and body written apart wait on the client's delayed ACK.
                socket
                    .set_nodelay(true)
                    .expect("TCP_NODELAY on a fresh socket");
                let state = accepting.clone();
                state.update(|_| (), |open| *open += 1);
                tokio::spawn(async move {
                    serve_connection(&state, socket).await;
                    state.update(|_| (), |open| *open -= 1);
                });
            }
        });
        FakeStage0 { base_url, state }
    }

    /// `http://127.0.0.1:{port}`, for `STAGE0_BASE_URL`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Every request received so far, in arrival order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.state.exchanges.lock().unwrap().clone()
    }

    /// Forgets the requests received so far (connections stay as they are).
    pub fn clear(&self) {
        let mut exchanges = self.state.exchanges.lock().unwrap();
        exchanges.clear();
        self.state.attempts.lock().unwrap().clear();
    }

    /// TCP connections open right now (idle keep-alive ones included).
    pub fn open_connections(&self) -> usize {
        *self.state.open_connections.lock().unwrap()
    }

    /// Waits until `ready` holds for the exchanges; the caller bounds the wait.
    pub async fn wait_until(&self, ready: impl Fn(&[Exchange]) -> bool) {
        let mut changed = self.state.changed.subscribe();
        loop {
            if ready(&self.state.exchanges.lock().unwrap()) {
                return;
            }
            changed
                .changed()
                .await
                .expect("the fake lives as long as this handle");
        }
    }
}

impl State {
    fn update(&self, exchanges: impl FnOnce(&mut Vec<Exchange>), open: impl FnOnce(&mut usize)) {
        exchanges(&mut self.exchanges.lock().unwrap());
        open(&mut self.open_connections.lock().unwrap());
        self.changed.send_modify(|version| *version += 1);
    }

    fn settle(&self, index: usize, fate: Fate) {
        self.update(|exchanges| exchanges[index].fate = fate, |_| ());
    }
}

/// Serves requests on one connection until either side closes it.
async fn serve_connection(state: &State, socket: TcpStream) {
    let mut reader = BufReader::new(socket);
    while let Some((request_id, goal)) = read_request(&mut reader).await {
        let mut index = 0;
        let mut attempt = 0;
        state.update(
            |exchanges| {
                let mut attempts = state.attempts.lock().unwrap();
                let seen = attempts.entry(request_id.clone()).or_insert(0);
                attempt = *seen;
                *seen += 1;
                index = exchanges.len();
                exchanges.push(Exchange {
                    request_id: request_id.clone(),
                    goal: goal.clone(),
                    attempt,
                    fate: Fate::Pending,
                });
            },
            |_| (),
        );
        let reply = (state.script)(&Received {
            request_id: &request_id,
            goal: &goal,
            attempt,
        });
        let fate = match reply {
            Reply::Answer {
                status,
                headers,
                body,
            } => {
                let socket = reader.get_mut();
                let head = head(status, &headers, body.len());
                let sent = socket.write_all(head.as_bytes()).await.is_ok()
                    && socket.write_all(&body).await.is_ok();
                answered_if(sent, status, body)
            }
            Reply::SlowBody {
                status,
                body,
                pause,
            } => {
                let socket = reader.get_mut();
                let (first, second) = body.split_at(body.len() / 2);
                let head = head(status, &[], body.len());
                let sent = socket.write_all(head.as_bytes()).await.is_ok()
                    && socket.write_all(first).await.is_ok()
                    && socket.flush().await.is_ok();
                tokio::time::sleep(pause).await;
                let sent = sent && socket.write_all(second).await.is_ok();
                answered_if(sent, status, body)
            }
            Reply::Close => Fate::ClosedByFake,
            Reply::Hang => {
                wait_for_close(&mut reader).await;
                Fate::ClosedByClient
            }
        };
        let open = matches!(fate, Fate::Answered { .. });
        state.settle(index, fate);
        if !open {
            return;
        }
    }
}

/// `Answered` when the whole response was written, else the client had closed the connection.
fn answered_if(sent: bool, status: u16, body: Vec<u8>) -> Fate {
    if sent {
        Fate::Answered { status, body }
    } else {
        Fate::ClosedByClient
    }
}

/// Returns when the client closes the connection (or sends anything, which it must not).
async fn wait_for_close(reader: &mut BufReader<TcpStream>) {
    let mut byte = [0u8; 1];
    let _ = reader.read(&mut byte).await;
}

fn head(status: u16, headers: &[(String, String)], length: usize) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Reads one request; its `X-Request-Id` and the `goal` of its JSON body. `None` at end of stream.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut content_length = 0;
    let mut request_id = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().ok()?;
            } else if name.eq_ignore_ascii_case("x-request-id") {
                request_id = value.trim().to_owned();
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).await.ok()?;
    let goal = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|body| body["goal"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Some((request_id, goal))
}
