//! The byte stream to the broker, written once over any runtime's TCP stream: plain TCP,
//! TLS (rustls through futures-rustls), and WebSocket (async-tungstenite) over either.
//!
//! The client's driver uses it; so can tools that drive the sans-IO session directly (the
//! `mqtt bench` load generator does, to keep a connection to a few kilobytes).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_util::future::Either;
use futures_util::io::AsyncWriteExt;

use crate::options::{Options, Scheme};
use crate::runtime::Runtime;

std::thread_local! {
    /// The bytes of one read, before they are appended to a connection's buffer.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16 * 1024]);
}

/// TCP, or TLS over TCP.
type Stream<S> = Either<S, Box<TlsStream<S>>>;

/// A byte stream to the broker.
pub struct Transport<S>(Inner<S>);

enum Inner<S> {
    /// MQTT straight over TCP or TLS.
    Bytes(Stream<S>),
    /// MQTT in WebSocket binary messages.
    #[cfg(feature = "websocket")]
    Ws(Box<ws::Socket<Stream<S>>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport<S> {
    /// Connects to the broker the options name. Encrypted schemes never fall back to plaintext.
    pub async fn connect<R: Runtime<Tcp = S>>(opts: &Options) -> io::Result<Self> {
        let b = &opts.broker;
        let tcp = R::connect_tcp(&b.host, b.port).await?;
        let stream = if b.scheme.is_tls() {
            Either::Right(Box::new(tls(opts, tcp).await?))
        } else {
            Either::Left(tcp)
        };
        match b.scheme {
            Scheme::Tcp | Scheme::Tls => Ok(Transport(Inner::Bytes(stream))),
            #[cfg(feature = "websocket")]
            Scheme::Ws | Scheme::Wss => Ok(Transport(Inner::Ws(Box::new(
                ws::Socket::connect(opts, stream).await?,
            )))),
            #[cfg(not(feature = "websocket"))]
            Scheme::Ws | Scheme::Wss => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "WebSocket URLs need the `websocket` feature",
            )),
        }
    }

    /// Appends what is available to `buf` (through `scratch`, so no memory is zeroed per
    /// read); 0 means the peer closed. Cancel-safe: nothing is consumed unless it is appended
    /// in the same poll.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        scratch: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Inner::Bytes(s) => {
                let n = std::task::ready!(Pin::new(s).poll_read(cx, scratch))?;
                buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                Poll::Ready(Ok(n))
            }
            #[cfg(feature = "websocket")]
            Inner::Ws(s) => s.poll_read(cx, buf),
        }
    }

    /// Appends what is available to `buf`; 0 means the peer closed. The bytes pass through a
    /// scratch buffer of the thread, so an idle connection holds none.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut scratch) => self.poll_read(cx, buf, &mut scratch),
                // Only reachable if a read polled another read on the same thread.
                Err(_) => Poll::Ready(Err(io::Error::other("re-entrant read"))),
            })
        })
        .await
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.0 {
            Inner::Bytes(s) => {
                s.write_all(data).await?;
                // TLS holds records until flushed; TCP's flush does nothing.
                s.flush().await
            }
            #[cfg(feature = "websocket")]
            Inner::Ws(s) => s.write(data).await,
        }
    }

    /// Closes the stream (TLS close_notify, WebSocket close frame, TCP FIN).
    pub async fn shutdown(&mut self) {
        let _ = match &mut self.0 {
            Inner::Bytes(s) => s.close().await,
            #[cfg(feature = "websocket")]
            Inner::Ws(s) => s.close().await,
        };
    }
}

async fn tls<S: AsyncRead + AsyncWrite + Unpin>(
    opts: &Options,
    tcp: S,
) -> io::Result<TlsStream<S>> {
    let config = crate::tls::client_config(opts, |p| std::fs::read(p))?;
    let name = crate::tls::server_name(opts)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[cfg(feature = "websocket")]
mod ws {
    use std::io;
    use std::task::{Context, Poll};

    use async_tungstenite::WebSocketStream;
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    use async_tungstenite::tungstenite::http::HeaderValue;
    use async_tungstenite::tungstenite::{Error, Message};
    use bytes::BytesMut;
    use futures_io::{AsyncRead, AsyncWrite};
    use futures_util::StreamExt;

    use crate::options::Options;

    /// MQTT over WebSocket: each binary message carries bytes of the MQTT stream.
    pub(crate) struct Socket<S>(WebSocketStream<S>);

    fn ws_error(e: Error) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, format!("WebSocket: {e}"))
    }

    impl<S: AsyncRead + AsyncWrite + Unpin + Send> Socket<S> {
        /// The WebSocket handshake for the options' URL, asking for the `mqtt` subprotocol.
        pub(crate) async fn connect(opts: &Options, stream: S) -> io::Result<Self> {
            let url = opts.broker.to_string();
            let mut request = url.as_str().into_client_request().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("WebSocket URL {url}: {e}"),
                )
            })?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            let (stream, _) = async_tungstenite::client_async(request, stream)
                .await
                .map_err(ws_error)?;
            Ok(Socket(stream))
        }

        /// Appends the next binary message to `buf`; 0 when the peer closed. Cancel-safe.
        pub(crate) fn poll_read(
            &mut self,
            cx: &mut Context<'_>,
            buf: &mut BytesMut,
        ) -> Poll<io::Result<usize>> {
            loop {
                let next = std::task::ready!(self.0.poll_next_unpin(cx));
                return Poll::Ready(match next {
                    None | Some(Ok(Message::Close(_))) => Ok(0),
                    Some(Ok(Message::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        Ok(data.len())
                    }
                    Some(Ok(Message::Text(_))) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "WebSocket text frame: MQTT uses binary frames",
                    )),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Err(ws_error(e)),
                });
            }
        }

        /// Sends `data` as one binary message.
        pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
            self.0
                .send(Message::binary(data.to_vec()))
                .await
                .map_err(ws_error)
        }

        /// Sends a close frame.
        pub(crate) async fn close(&mut self) -> io::Result<()> {
            self.0.close(None).await.map_err(ws_error)
        }
    }
}
