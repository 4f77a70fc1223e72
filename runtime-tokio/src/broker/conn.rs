//! One connection's task: handshake (TLS, WebSocket), then bytes in and out of the core.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use mqtt_proto::ReasonCode;
use mqtt_session::broker::scram::{self, ScramServer};
use mqtt_session::broker::{Answer, ConnId, Error as CoreError, Question};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_util::either::Either;

use super::config::ListenKind;
use super::{AuthRequest, AuthStep, Core, Shared, Slot};

/// What a listener's connections need for their handshake.
pub(crate) struct ListenerCtx {
    pub kind: ListenKind,
    pub path: String,
    pub tls: Option<TlsAcceptor>,
}

type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// The transport after its handshake.
enum Io {
    Stream(Stream),
    Ws(Box<WebSocketStream<Stream>>),
}

impl Io {
    /// Reads what is there into `buf`; 0 at the end of the stream.
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Io::Stream(s) => s.read_buf(buf).await,
            Io::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                        buf.extend_from_slice(&b);
                        return Ok(b.len());
                    }
                    // MQTT over WebSocket is carried in binary frames only [MQTT-6.0.0-1].
                    Some(Ok(Message::Text(_))) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "text frame on an MQTT WebSocket",
                        ));
                    }
                    Some(Ok(_)) => {} // ping, pong: tungstenite answers pings itself
                }
            },
        }
    }

    /// Whether [`Io::readable`] can wait without a buffer (a plain TCP socket; TLS and
    /// WebSocket read through buffers of their own).
    fn plain(&self) -> bool {
        matches!(self, Io::Stream(Either::Left(_)))
    }

    /// Ready once a plain socket has bytes (or an error or its end) to read.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Stream(Either::Left(s)) => s.poll_read_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Io::Stream(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Io::Ws(ws) => ws
                .send(Message::Binary(bytes::Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Io::Stream(s) => s.shutdown().await,
            Io::Ws(ws) => SinkExt::close(ws).await.map_err(io::Error::other),
        };
    }
}

/// Decrements the open-connection count when the task ends, however it ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The handshake: TLS (with the client certificate's common name), WebSocket upgrade.
async fn handshake(sock: TcpStream, ctx: &ListenerCtx) -> io::Result<(Io, Option<String>)> {
    let (stream, identity) = match &ctx.tls {
        Some(acceptor) => {
            let s = acceptor.accept(sock).await?;
            let cn = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(super::tls::common_name);
            (Either::Right(Box::new(s)), cn)
        }
        None => (Either::Left(sock), None),
    };
    if !matches!(ctx.kind, ListenKind::Ws | ListenKind::Wss) {
        return Ok((Io::Stream(stream), identity));
    }
    let path = ctx.path.clone();
    // The signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut err = ErrorResponse::new(Some("no MQTT endpoint here".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        // Browsers drop the connection unless the server picks the subprotocol they offer.
        let offers_mqtt = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if offers_mqtt {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .map_err(io::Error::other)?;
    Ok((Io::Ws(Box::new(ws)), identity))
}

/// Serves one accepted socket until it closes.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
) {
    let _open = OpenGuard(shared.clone());
    // One connect timeout from the accept: the handshake and the CONNECT share it.
    let accepted = shared.now();
    let limit = Duration::from_secs(shared.cfg.connect_timeout);
    // Boxed: the TLS and WebSocket handshake states are large, and an idle connection's task
    // should not keep room for them once they are done (memory per connection).
    let (mut io, identity) =
        match tokio::time::timeout(limit, Box::pin(handshake(sock, &ctx))).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "handshake timed out");
                return;
            }
        };
    // With siblings the CONNECT is read first: its client id picks the sibling.
    let mut rbuf = BytesMut::new();
    let shard = if shared.shards() > 1 {
        let left = limit.saturating_sub(shared.now().saturating_since(accepted));
        let max = shared.cfg.max_packet_size as usize;
        match tokio::time::timeout(left, Box::pin(first_client_id(&mut io, &mut rbuf, max))).await {
            Ok(Some(id)) => shared.shard_of(&id),
            // Not a CONNECT, or malformed: the first sibling refuses it.
            Ok(None) => 0,
            Err(_) => {
                tracing::info!(%peer, "no CONNECT within the connect timeout");
                return;
            }
        }
    } else {
        0
    };
    let slot = Arc::new(Slot::default());
    let id = {
        let mut core = shared.lock_shard(shard);
        if core.stopping {
            return;
        }
        let id = core.broker.handle_open(accepted);
        core.slots.insert(id, slot.clone());
        id
    };
    tracing::debug!(conn = %id, %peer, "connection opened");
    let mut conn = Conn {
        shared,
        shard,
        id,
        slot,
        rbuf,
        out: Vec::new(),
        filled: 0,
        more: false,
        gone: false,
        quiet: false,
        woke: false,
        read_room: MIN_READ,
        auth: None,
        scram: None,
        identity,
        peer,
    };
    conn.run(io).await;
}

/// Reads until the first packet is whole; its client id if it is a CONNECT (`None` for
/// anything else, and at the end of the stream).
async fn first_client_id(io: &mut Io, buf: &mut BytesMut, max: usize) -> Option<String> {
    loop {
        match mqtt_proto::decode(buf, mqtt_proto::ProtocolVersion::V5, max) {
            Ok(mqtt_proto::Status::Complete((mqtt_proto::Packet::Connect(c), _))) => {
                return Some(c.client_id.to_owned());
            }
            Ok(mqtt_proto::Status::Incomplete(_)) => {}
            _ => return None,
        }
        buf.reserve(1024);
        match io.read(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Bytes kept unread in front of the core before the task stops reading from the socket (and
/// room for one whole packet of the largest size allowed above it).
const READ_AHEAD: usize = 64 * 1024;
/// The least room a read is given.
const MIN_READ: usize = 1024;
/// Bytes encoded for the socket before they are written (and the lock released).
const WRITE_BATCH: usize = 64 * 1024;

struct Conn {
    shared: Arc<Shared>,
    /// The sibling core that serves this connection.
    shard: usize,
    id: ConnId,
    slot: Arc<Slot>,
    /// Received bytes the core has not consumed yet.
    rbuf: BytesMut,
    /// Encoded packets, `..filled` to be written.
    out: Vec<u8>,
    filled: usize,
    /// `poll_transmit` had more when the batch was full.
    more: bool,
    /// The core forgot the connection.
    gone: bool,
    /// The last read was small: see [`Conn::keeps_nothing`].
    quiet: bool,
    /// The last service woke another connection's task.
    woke: bool,
    /// Room offered to the next socket read: it grows while reads fill it.
    read_room: usize,
    /// What an extended authentication's later steps need (with an authentication hook).
    auth: Option<Box<AuthRequest>>,
    /// The built-in SCRAM-SHA-512 exchange between its two steps.
    scram: Option<Box<ScramServer>>,
    identity: Option<String>,
    peer: SocketAddr,
}

impl Conn {
    async fn run(&mut self, mut io: Io) {
        // The broker ended it (not the client, not an error): linger before the close.
        let mut ended_here = false;
        if !self.rbuf.is_empty() {
            // The CONNECT that picked the sibling.
            self.service();
        }
        let reason = loop {
            if std::mem::take(&mut self.woke) && self.quiet {
                // Another connection's task has packets from us (a publish routed to its
                // subscriber): tokio runs it next on this worker, but only once this task
                // waits. Letting it go first puts the delivery ahead of our own write (the
                // PUBACK), which is latency the subscriber sees. Only for a quiet connection:
                // under load a yield costs more (a trip through the driver) than it saves.
                tokio::task::yield_now().await;
            }
            if self.filled > 0 {
                let write = io.write(self.out.get(..self.filled).unwrap_or_default());
                if let Err(e) = write.await {
                    break format!("write failed: {e}");
                }
                let c = &self.shared.counters;
                c.bytes_out.fetch_add(self.filled as u64, Ordering::Relaxed);
                self.filled = 0;
                // A write may unblock the core (it stops reading while it owes many packets).
                if !self.rbuf.is_empty() || self.more {
                    self.service();
                    continue;
                }
                if self.keeps_nothing() {
                    self.out = Vec::new();
                }
            }
            let work = self.slot.take();
            for q in work.questions {
                // Boxed for the same reason: asked once per connection.
                Box::pin(self.answer(q)).await;
            }
            if self.filled > 0 && work.close.is_none() {
                continue;
            }
            if let Some(reason) = work.close {
                self.service();
                if self.filled > 0 {
                    // Boxed, like the other steps of the close: a timer is large, and every
                    // idle connection's task would keep room for it (376 B of future, 288 B
                    // with the three boxed).
                    let last = io.write(self.out.get(..self.filled).unwrap_or_default());
                    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), last)).await;
                }
                ended_here = true;
                break format!("{reason:?}");
            }
            if self.gone {
                break "closed".into();
            }
            if self.more {
                self.service();
                continue;
            }
            // Room for one more whole packet: a packet larger than READ_AHEAD must fit.
            let max_packet = self.shared.cfg.max_packet_size as usize;
            let room = self.rbuf.len() < READ_AHEAD + max_packet.saturating_add(5);
            // An idle plain socket waits without a read buffer (memory per connection): one
            // is taken when bytes arrive, small at first, doubling when busy.
            let bufferless = self.rbuf.capacity() == 0 && io.plain();
            if !bufferless && self.rbuf.capacity() - self.rbuf.len() < self.read_room {
                self.rbuf.reserve(self.read_room);
            }
            let offered = self.rbuf.capacity() - self.rbuf.len();
            let mut last_read = 0;
            if bufferless {
                // Polled by hand: a readiness future and a waiter would each take room in
                // every idle connection's task.
                let slot = &self.slot;
                let woke = std::future::poll_fn(|cx| {
                    if slot.woken.poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    if room && let Poll::Ready(r) = io.poll_read_ready(cx) {
                        return Poll::Ready(Some(r));
                    }
                    Poll::Pending
                })
                .await;
                match woke {
                    None => self.service(),
                    Some(Ok(())) => self.rbuf.reserve(1024),
                    Some(Err(e)) => break format!("read failed: {e}"),
                }
                continue;
            }
            tokio::select! {
                () = std::future::poll_fn(|cx| self.slot.woken.poll(cx)) => self.service(),
                r = io.read(&mut self.rbuf), if room => match r {
                    Ok(0) => break "closed by the client".into(),
                    Ok(n) => {
                        self.shared.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        last_read = n;
                        self.service();
                    }
                    Err(e) => break format!("read failed: {e}"),
                },
            }
            // A connection that went quiet gives its buffers back; a busy one keeps them
            // (and gives back only what a burst made them grow to).
            if last_read > 0 {
                self.quiet = last_read < 512;
                // A read that filled its room may have left more in the socket: the next one
                // gets twice the room (a read per packet of 1 KiB had tripled the system
                // calls of a busy stream); otherwise twice what came.
                self.read_room = if last_read >= offered {
                    self.read_room * 2
                } else {
                    last_read * 2
                }
                .clamp(MIN_READ, READ_AHEAD);
            }
            if self.rbuf.is_empty() && (self.quiet || self.rbuf.capacity() > READ_AHEAD) {
                self.rbuf = BytesMut::new();
            }
            if self.filled == 0 && (self.keeps_nothing() || self.out.len() > WRITE_BATCH * 2) {
                self.out = Vec::new();
            }
        };
        Box::pin(tokio::time::timeout(Duration::from_secs(1), io.shutdown()))
            .await
            .ok();
        if ended_here {
            // Closing with unread bytes resets the connection, and the client (still writing
            // an oversized packet, say) may then never read the DISCONNECT that says why:
            // what it still sends is read and dropped, for a moment and a bounded amount.
            let mut scratch = BytesMut::with_capacity(4096);
            let drain = async {
                let mut total = 0usize;
                while total < 4 << 20 {
                    scratch.clear();
                    match io.read(&mut scratch).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            };
            let _ = Box::pin(tokio::time::timeout(Duration::from_millis(500), drain)).await;
        }
        let mut core = self.shared.lock_shard(self.shard);
        let _ = core.broker.handle_close(self.id, self.shared.now());
        core.slots.remove(&self.id);
        let _ = core.dispatch(self.id);
        drop(core);
        tracing::info!(conn = %self.id, peer = %self.peer, reason, "connection closed");
    }

    /// Whether the connection is quiet enough to hold no buffers between its packets: its
    /// reads are small, and so are its writes (a subscriber that only acknowledges reads
    /// little but writes much, and keeps its buffers once they have grown past a few packets).
    fn keeps_nothing(&self) -> bool {
        self.quiet && self.out.len() <= 4096
    }

    /// Under the lock: feeds unread bytes, hands out the core's output, drains this
    /// connection's packets into its write buffer.
    fn service(&mut self) {
        let shared = self.shared.clone();
        let mut core = shared.lock_shard(self.shard);
        self.service_locked(&mut core);
    }

    fn service_locked(&mut self, core: &mut Core) {
        let now = self.shared.now();
        if !self.rbuf.is_empty() && !self.more {
            match core.broker.handle_read(self.id, now, &self.rbuf) {
                Ok(n) => self.rbuf.advance(n),
                Err(_) => self.gone = true,
            }
        }
        self.more = false;
        loop {
            if self.filled >= WRITE_BATCH {
                self.more = true;
                break;
            }
            if self.out.len() < self.filled + 256 {
                let len = (self.filled + 512).max(self.out.len() * 2);
                self.out.resize(len, 0);
            }
            let buf = self.out.get_mut(self.filled..).unwrap_or_default();
            match core.broker.poll_transmit(self.id, now, buf) {
                Ok(Some(n)) => self.filled += n,
                Ok(None) => {
                    if self.keeps_nothing() {
                        core.broker.shrink(self.id);
                    }
                    break;
                }
                Err(CoreError::BufferTooSmall { needed }) => {
                    self.out.resize(self.filled + needed, 0);
                }
                Err(_) => {
                    self.gone = true;
                    break;
                }
            }
        }
        // Once, after the output: the read named connections to wake (a publish routed to
        // them), and what went out may have made the room a held publisher waits for.
        self.woke |= core.dispatch(self.id);
    }

    /// The configuration's answer to a CONNECT: the certificate's name, the password file or
    /// `allow_anonymous`; an extended method is unknown to it (0x8C).
    async fn configured_answer(
        &self,
        method: bool,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Answer {
        let shared = &self.shared;
        let cfg = &shared.cfg;
        if method {
            Answer::Refuse(ReasonCode::BadAuthenticationMethod)
        } else if cfg.tls.use_identity_as_username {
            // The certificate's common name becomes the session's user name, which the ACL
            // then sees for as long as the session lives (offline too).
            match &self.identity {
                Some(cn) => Answer::AcceptAs(cn.as_str().into()),
                None => Answer::Refuse(ReasonCode::NotAuthorized),
            }
        } else {
            match (username, shared.passwords.is_some()) {
                (None, _) if cfg.allow_anonymous => Answer::Accept,
                (None, _) | (Some(_), false) => Answer::Refuse(ReasonCode::NotAuthorized),
                (Some(user), true) => {
                    let s = shared.clone();
                    let user = user.to_owned();
                    let password = password.unwrap_or_default().to_vec();
                    // PBKDF2 takes milliseconds: not on a worker thread.
                    let ok = tokio::task::spawn_blocking(move || {
                        s.passwords
                            .as_ref()
                            .is_some_and(|p| p.verify(&user, &password))
                    })
                    .await
                    .unwrap_or(false);
                    if ok {
                        Answer::Accept
                    } else {
                        Answer::Refuse(ReasonCode::BadUserNameOrPassword)
                    }
                }
            }
        }
    }

    /// The built-in SCRAM-SHA-512's first step over the password file: the server-first
    /// message, or a refusal (0x8C without a password file, 0x87 for a malformed message).
    fn scram_first(&mut self, client_first: Option<&[u8]>) -> Answer {
        let Some(passwords) = self.shared.passwords.as_ref() else {
            return Answer::Refuse(ReasonCode::BadAuthenticationMethod);
        };
        let mut random = [0u8; 18];
        if getrandom::fill(&mut random).is_err() {
            return Answer::Refuse(ReasonCode::UnspecifiedError);
        }
        let nonce: String = random.iter().map(|b| format!("{b:02x}")).collect();
        match passwords.scram_start(client_first.unwrap_or_default(), nonce.as_bytes()) {
            Ok((server, first)) => {
                self.scram = Some(Box::new(server));
                Answer::Continue(first)
            }
            Err(e) => {
                tracing::warn!(conn = %self.id, peer = %self.peer, error = %e, "SCRAM refused");
                Answer::Refuse(ReasonCode::NotAuthorized)
            }
        }
    }

    /// The built-in SCRAM-SHA-512's last step: the server's signature, as the user it proved.
    fn scram_final(&mut self, client_final: Option<&[u8]>) -> Answer {
        let Some(server) = self.scram.take() else {
            return Answer::Refuse(ReasonCode::ProtocolError);
        };
        let user: Box<str> = server.user().into();
        match server.finish(client_final.unwrap_or_default()) {
            Ok(last) => {
                tracing::info!(conn = %self.id, peer = %self.peer, username = %user, "authenticated (SCRAM-SHA-512)");
                Answer::CompleteAs(last, user)
            }
            Err(e) => {
                tracing::warn!(conn = %self.id, peer = %self.peer, username = %user, error = %e, "SCRAM refused");
                Answer::Refuse(ReasonCode::NotAuthorized)
            }
        }
    }

    /// Answers an authentication question: the application's hook first, then the
    /// configuration (the password check runs off the workers).
    async fn answer(&mut self, q: Question) {
        let shared = self.shared.clone();
        let hook = shared.hooks.authenticate.as_deref();
        let (answer, who) = match q {
            Question::Connect {
                client_id,
                username,
                password,
                method,
                data,
                ..
            } => {
                let who = (client_id.clone(), username.clone());
                let mut request = AuthRequest {
                    step: AuthStep::Connect,
                    peer: self.peer,
                    certificate_name: self.identity.clone(),
                    client_id,
                    username,
                    password,
                    method,
                    data,
                    state: None,
                };
                let answer = match hook {
                    Some(h) => h.authenticate(&mut request).await,
                    None => None,
                };
                let answer = match answer {
                    Some(a) => a,
                    None if request.method.as_deref() == Some(scram::METHOD) => {
                        self.scram_first(request.data.as_deref())
                    }
                    None => {
                        let r = &request;
                        let (user, password) = (r.username.as_deref(), r.password.as_deref());
                        self.configured_answer(r.method.is_some(), user, password)
                            .await
                    }
                };
                // Kept for the exchange's next steps and a re-authentication (only those
                // with a method have any), without the password.
                request.password = None;
                if hook.is_some() && request.method.is_some() && self.scram.is_none() {
                    self.auth = Some(Box::new(request));
                }
                (answer, Some(who))
            }
            Question::Auth {
                data,
                reauthenticate,
                method,
                ..
            } => {
                // The built-in exchange: its own state says which step this is (the core
                // calls every AUTH of a connected client a re-authentication).
                if self.scram.is_some() {
                    let answer = self.scram_final(data.as_deref());
                    return self.send_answer(answer);
                }
                if reauthenticate && self.auth.is_none() && &*method == scram::METHOD {
                    let answer = self.scram_first(data.as_deref());
                    return self.send_answer(answer);
                }
                let answer = match (hook, self.auth.as_deref_mut()) {
                    (Some(h), Some(request)) => {
                        request.step = if reauthenticate {
                            AuthStep::Reauthenticate
                        } else {
                            AuthStep::Continue
                        };
                        request.data = data;
                        h.authenticate(request).await
                    }
                    _ => None,
                };
                let answer = answer.unwrap_or(Answer::Refuse(ReasonCode::BadAuthenticationMethod));
                (answer, None)
            }
            _ => return,
        };
        if let Some((client_id, username)) = who {
            let user = self.identity.as_deref().or(username.as_deref());
            match &answer {
                Answer::Accept
                | Answer::AcceptAs(_)
                | Answer::Complete(_)
                | Answer::CompleteAs(..) => {
                    tracing::info!(conn = %self.id, peer = %self.peer, %client_id, username = user, "authenticated");
                }
                Answer::Refuse(rc) => {
                    tracing::warn!(conn = %self.id, peer = %self.peer, %client_id, username = user, reason = %rc, "refused");
                }
                Answer::Continue(_) => {}
            }
        }
        self.send_answer(answer);
    }

    /// Gives the core the answer to this connection's question.
    fn send_answer(&mut self, answer: Answer) {
        let shared = self.shared.clone();
        let mut core = shared.lock_shard(self.shard);
        let _ = core
            .broker
            .handle_auth_answer(self.id, self.shared.now(), answer);
        self.service_locked(&mut core);
    }
}
